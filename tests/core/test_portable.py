"""The portable checks under CPython (the same functions run under MicroPython)."""

import pytest

from tests.core import portable


@pytest.mark.parametrize("check", portable.CHECKS, ids=lambda f: f.__name__[6:])
def test_portable(check):
    check()
