"""The floors and canonical-key checks under CPython, and the same functions under
MicroPython 1.27 (the pure core promises both)."""

import sys

import pytest

from tests.core import portable_trust
from tests.core.test_micropython import micropython, run_core  # noqa: F401 - the fixture


@pytest.mark.parametrize("check", portable_trust.CHECKS, ids=lambda f: f.__name__[6:])
def test_portable_trust(check):
    check()


@pytest.mark.skipif(not __import__("shutil").which("node"), reason="node is not installed")
def test_floors_and_canonical_keys_under_micropython(micropython):  # noqa: F811
    result = run_core(micropython, "tests/core/portable_trust.py")
    sys.stdout.write(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT %d passed 0 failed" % len(portable_trust.CHECKS) in result.stdout
