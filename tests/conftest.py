"""Suite-wide: no test may write the charger's real state dir (hil/state_guard.py), and a
failed test that ran a rig shows the tail of its board's console and broker log (a flake in
CI then says what the board did, not only what the test waited for)."""

import pytest

from hil.state_guard import real_state_dir_untouched  # noqa: F401  (autouse)

TAIL_LINES = 40


def _tail(path):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return "(not readable: %s)" % e
    return "\n".join(lines[-TAIL_LINES:])


def _rigs(item):
    """The rigs (hil.harness.Harness) a test ran: fixtures that are rigs, or factories that
    keep theirs in `.rigs`."""
    from hil.harness import Harness

    found = []
    for value in getattr(item, "funcargs", {}).values():
        for candidate in [value] + list(getattr(value, "rigs", None) or []):
            if isinstance(candidate, Harness) and candidate not in found:
                found.append(candidate)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for i, rig in enumerate(_rigs(item)):
        try:  # what the rig read from the board (a MicroPython board keeps no console.log)
            console = "\n".join(rig.console_text().splitlines()[-TAIL_LINES:])
        except Exception as e:
            console = "(not readable: %r)" % e
        report.sections.append(("rig %d console (last %d lines)" % (i, TAIL_LINES), console))
        if rig.broker is not None:
            report.sections.append(("rig %d broker log (last %d lines)" % (i, TAIL_LINES),
                                    _tail(rig.broker.log_path)))  # fmt: skip
