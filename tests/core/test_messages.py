"""The shared message module under CPython; the same checks run under MicroPython below."""

import sys

import pytest

from tests.core import messages_checks
from tests.core.test_micropython import micropython, run_core  # noqa: F401 (fixture)


@pytest.mark.parametrize("check", messages_checks.CHECKS, ids=lambda f: f.__name__[6:])
def test_messages(check):
    check()


def test_messages_checks_pass_under_micropython(micropython):  # noqa: F811
    result = run_core(micropython, "tests/core/messages_checks.py")
    sys.stdout.write(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT %d passed 0 failed" % len(messages_checks.CHECKS) in result.stdout
