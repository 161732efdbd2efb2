"""The LCUS relay driver against the simulated relay board on a pty: exact bytes, no drift."""

import os

import pytest
import serial

from agent.core.errors import ConfigError
from hil.drivers import power
from hil.drivers.power import LcusRelay


def test_frames_are_the_documented_bytes():
    assert power.frame(1, True) == bytes.fromhex("A00101A2")
    assert power.frame(1, False) == bytes.fromhex("A00100A1")
    assert power.frame(2, True) == bytes.fromhex("A00201A3")
    assert power.frame(8, False) == bytes.fromhex("A00800A8")


@pytest.mark.parametrize("channel", [0, 9, -1])
def test_channel_outside_the_board_is_refused_before_opening_a_port(channel):
    with pytest.raises(ConfigError, match="outside 1..8"):
        LcusRelay("/nonexistent/port", channel=channel)


def test_on_off_reach_the_relay(relay_sim):
    with LcusRelay(relay_sim.port, channel=2) as relay:
        relay.on()
        assert relay_sim.wait_for(lambda ev: ("relay", 2, True) in ev)
        relay.off()
        assert relay_sim.wait_for(lambda ev: ("relay", 2, False) in ev)
        assert relay.state is False
    assert relay_sim.states == {1: False, 2: False, 3: False, 4: False}
    assert relay_sim.rejected == 0


def test_cycle_turns_off_waits_then_on(relay_sim):
    waits = []
    with LcusRelay(relay_sim.port, channel=1, sleep=waits.append) as relay:
        relay.cycle(off_time=1.5)
        assert relay_sim.wait_for(lambda ev: len(ev) == 2)
    assert relay_sim.events == [("relay", 1, False), ("relay", 1, True)]
    assert waits == [1.5]


def test_line_noise_before_a_frame_is_dropped_not_obeyed(relay_sim):
    # A glitch on the USB serial line (or a half frame after a reconnect) must not switch
    # anything; the next valid frame must still work.
    with serial.serial_for_url(relay_sim.port) as raw:
        raw.write(bytes.fromhex("00 A0 01 01 FF A0 05"))  # junk, bad checksum, half frame
        raw.flush()
    with LcusRelay(relay_sim.port, channel=3) as relay:
        relay.on()
        assert relay_sim.wait_for(lambda ev: ("relay", 3, True) in ev)
    assert relay_sim.events == [("relay", 3, True)]
    assert relay_sim.rejected >= 5


def test_parse_frame_rejects_bad_checksum():
    with pytest.raises(ValueError, match="checksum"):
        power.parse_frame(bytes.fromhex("A00101A1"))
    assert power.parse_frame(bytes.fromhex("A00301A4")) == (3, True)


def test_relay_port_is_a_real_tty(relay_sim):
    assert os.path.exists(relay_sim.port) and relay_sim.port.startswith("/dev/")
