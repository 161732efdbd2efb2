"""The EV simulator driver against the simulated EV simulator on a pty (protocol in docs/hil.md)."""

import os
import tty

import pytest

from agent.core.errors import ConfigError
from hil.drivers.evsim import EvSim, EvSimError, max_current, parse_status


def test_ident_and_cp_states(evsim_device):
    with EvSim(evsim_device.port) as ev:
        assert ev.ident() == "ID evsim 1"
        for state in "BCB":
            ev.set_cp(state)
    assert evsim_device.events == [("cp", "B"), ("cp", "C"), ("cp", "B")]
    assert evsim_device.cp == "B"


def test_status_reports_the_pilot_the_charger_drives(evsim_device):
    with EvSim(evsim_device.port) as ev:
        ev.set_cp("C")
        evsim_device.set_pwm(53.3)
        assert ev.status() == {"cp": "C", "pwm": 53.3, "max_a": 32.0}
        evsim_device.set_pwm(0)
        assert ev.status()["max_a"] == 0.0


def test_unknown_command_is_an_error_not_a_silent_ok(evsim_device):
    with EvSim(evsim_device.port) as ev:
        with pytest.raises(EvSimError, match="unknown command"):
            ev.command("CHARGE FASTER")
        assert ev.ident().startswith("ID ")  # still in step after an ERR


def test_invalid_cp_state_is_refused_locally(evsim_device):
    with EvSim(evsim_device.port) as ev:
        with pytest.raises(ConfigError):
            ev.set_cp("G")
    assert evsim_device.events == []


def test_silent_simulator_is_an_error():
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with EvSim(os.ttyname(slave), timeout=0.3) as ev:
            with pytest.raises(EvSimError, match="no reply"):
                ev.ident()
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("duty, amps", [(5, 0.0), (10, 6.0), (50, 30.0), (90, 65.0), (97, 0.0)])
def test_pwm_to_current_follows_iec_61851(duty, amps):
    assert max_current(duty) == amps


def test_malformed_status_line():
    with pytest.raises(EvSimError):
        parse_status("STATUS CP C")
