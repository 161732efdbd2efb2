"""The front-end engine options' trace scenarios under CPython (also run under MicroPython)."""

import pytest

from tests.core import scenarios_frontend


@pytest.mark.parametrize("scenario", scenarios_frontend.SCENARIOS, ids=lambda f: f.__name__[9:])
def test_scenario(scenario):
    scenario()
