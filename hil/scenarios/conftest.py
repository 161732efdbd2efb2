"""pytest plugin for the HIL scenario catalogue: `pytest hil/scenarios --rig RIG.toml`.

Every scenario gets a fresh `rig` (board powered on, backend up) built from the rig file
(default: hil/rigs/virtual.toml, the CI board). After the run, a JUnit XML file and an HTML
timeline per scenario (statuses, checks with evidence, console) are written to --hil-report.
"""

import os
import time

import pytest

from hil import rig as rig_mod
from hil.report import Report
from hil.state_guard import real_state_dir_untouched  # noqa: F401  (autouse)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RIG = os.path.join(os.path.dirname(HERE), "rigs", "virtual.toml")
# The virtual board's agent config in the catalogue, unless a scenario's virtual_agent marker
# says otherwise: a backend that stays away 5 s fails the communication check (the
# no-backend release) instead of half the 30 s trial window; a healthy board answers the
# first ping.
VIRTUAL_AGENT = {"trial": {"communication": {"retry_for_s": 5}}}


def pytest_addoption(parser):
    group = parser.getgroup("hil", "hardware-in-the-loop scenarios")
    group.addoption("--rig", default=DEFAULT_RIG, help="rig description (TOML); default: virtual")
    group.addoption(
        "--hil-report",
        default="reports/hil",
        help="directory for junit.xml and report.html (default: reports/hil)",
    )


def virtual_agent(node):
    """VIRTUAL_AGENT with the tables of the scenario's virtual_agent marker laid over it."""
    sections = dict((name, dict(table)) for name, table in VIRTUAL_AGENT.items())
    marker = node.get_closest_marker("virtual_agent")
    for name, table in (marker.kwargs if marker else {}).items():
        sections.setdefault(name, {}).update(table)
    return sections


@pytest.fixture(scope="session")
def hil_report(request):
    report = Report(request.config.getoption("--hil-report"))
    yield report
    path = report.write()
    print("\nHIL report: %s" % os.path.abspath(path))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.hil_call = rep


@pytest.fixture
def rig(request, tmp_path, hil_report):
    description = rig_mod.load(request.config.getoption("--rig"))
    link_rate = getattr(request, "param", 0)
    started = time.monotonic()
    if description.board.kind == "virtual":
        from hil.virtual.rig import VirtualRig

        r = VirtualRig(str(tmp_path / "rig"), watchdog_s=10.0, trial_window_s=30,
                       link_rate=link_rate,
                       agent_overrides=virtual_agent(request.node))  # fmt: skip
    elif description.board.kind == "bench":
        from hil.bench import BenchRig

        r = BenchRig(description, str(tmp_path / "rig"), link_rate=link_rate)
    else:
        pytest.skip(
            "rig kind %r does not run the agent; the QEMU rig has its own tests "
            "(tests/hil_qemu, tests/bootloader)" % description.board.kind
        )
    r.start()
    try:
        r.power_on()
        r.start_row = r.wait_online(60)
        yield r
    finally:
        rep = getattr(request.node, "hil_call", None)
        error = None if rep is None or rep.passed else str(rep.longrepr)[-4000:]
        s = r.scenario
        hil_report.scenario(
            request.node.name,
            r,
            s["job"],
            s["expect"] or "pass",
            s["final"] or {"status": "pass" if error is None else "error"},
            error=error,
            started=started,
        )
        r.close()
