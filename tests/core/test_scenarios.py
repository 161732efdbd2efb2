"""The journey's trace scenarios under CPython (the same functions run under MicroPython)."""

import pytest

from tests.core import scenarios


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS, ids=lambda f: f.__name__[9:])
def test_scenario(scenario):
    scenario()
