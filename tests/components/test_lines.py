"""BOOT0/NRST lines from their config specs: DTR/RTS of the MCU's serial adapter (pyserial's
loop:// port keeps the levels set on it; a pty has no modem lines), a GPIO value file, a
command such as gpioset; `!` inverts, and bad specs are config errors naming the key."""

import os
import stat

import pytest
import serial

from agent.components.lines import (
    CommandLine,
    GpioFile,
    LineError,
    NoLine,
    SerialLine,
    parse_line,
)
from agent.core.errors import ConfigError


def test_dtr_and_rts_drive_the_adapters_modem_lines_with_inversion():
    port = serial.serial_for_url("loop://", do_not_open=False)
    dtr, rts = parse_line("dtr", port), parse_line("!rts", port)
    assert isinstance(dtr, SerialLine) and rts.name == "!rts"
    dtr.set(True)
    rts.set(True)  # asserted through an inverting stage: the adapter's RTS goes low
    assert (port.dtr, port.rts) == (True, False)
    dtr.set(False)
    rts.set(False)
    assert (port.dtr, port.rts) == (False, True)
    port.close()


def test_gpio_value_file_and_inverted(tmp_path):
    path = tmp_path / "value"
    path.write_text("")
    parse_line("gpio:%s" % path).set(True)
    assert path.read_text() == "1"
    line = parse_line("!gpio:%s" % path)
    assert isinstance(line, GpioFile)
    line.set(True)
    assert path.read_text() == "0"
    with pytest.raises(LineError, match="cannot set GPIO"):
        parse_line("gpio:%s" % (tmp_path / "no" / "value")).set(True)


def test_command_line_gets_the_level_and_a_failing_command_is_a_line_error(tmp_path):
    log = tmp_path / "levels"
    script = tmp_path / "gpioset"
    script.write_text('#!/bin/sh\necho "$1" >> %s\n[ "$1" != "17=1" ] || [ ! -e %s ]\n'
                      % (log, tmp_path / "fail"))  # fmt: skip
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    line = parse_line("cmd:%s 17={level}" % script)
    assert isinstance(line, CommandLine)
    line.set(True)
    parse_line("!cmd:%s 17={level}" % script).set(True)
    assert log.read_text().split() == ["17=1", "17=0"]
    (tmp_path / "fail").write_text("")
    with pytest.raises(LineError, match="exited 1"):
        line.set(True)
    with pytest.raises(LineError, match="failed"):
        parse_line("cmd:%s {level}" % os.path.join(str(tmp_path), "missing")).set(True)


@pytest.mark.parametrize("spec", ["gpio:", "cmd:", "dtrx", "uart:3", 5])
def test_bad_specs_are_config_errors_naming_the_key(spec):
    with pytest.raises(ConfigError, match=r"\[components.safety\] boot0"):
        parse_line(spec, object(), "[components.safety] boot0")


def test_dtr_without_an_open_port_and_no_line():
    with pytest.raises(ConfigError, match="needs the serial port"):
        parse_line("dtr", None, "nreset")
    assert isinstance(parse_line(""), NoLine) and isinstance(parse_line("none"), NoLine)
