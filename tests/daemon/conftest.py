"""The daemon as a charger runs it: on a virtual board, against a real broker and CSMS.

Reboots are real (the board's init restarts, the agent process is a new one); nothing here
calls the daemon in-process, so what is tested is what ships.
"""

import pytest

from hil.virtual.rig import VirtualRig


@pytest.fixture
def make_rig(tmp_path):
    rigs = []

    def make(**kw):
        kw.setdefault("watchdog_s", 10.0)
        kw.setdefault("trial_window_s", 30)
        rig = VirtualRig(str(tmp_path / ("rig%d" % len(rigs))), **kw).start()
        rigs.append(rig)
        rig.power_on()
        rig.wait_online(30)
        return rig

    make.rigs = rigs  # a failed test shows their consoles (tests/conftest.py)
    yield make
    for rig in rigs:
        rig.close()


@pytest.fixture
def rig(make_rig):
    return make_rig()
