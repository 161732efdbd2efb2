"""Rig files: the samples load, and every mistake names the file, the key and the fix."""

import os

import pytest

from agent.core.errors import ConfigError
from hil import rig

RIGS = os.path.join(os.path.dirname(__file__), "..", "..", "hil", "rigs")


def write(tmp_path, text):
    path = tmp_path / "rig.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", ["virtual", "qemu", "bench-example"])
def test_sample_rigs_load(name):
    loaded = rig.load(os.path.join(RIGS, name + ".toml"))
    assert loaded.board.kind in rig.BOARD_KINDS


def test_bench_rig_names_its_ports():
    loaded = rig.load(os.path.join(RIGS, "bench-example.toml"))
    assert loaded.console.url.startswith("/dev/serial/by-id/")
    power = loaded.power
    assert (power.kind, power.channel, power.baudrate) == ("lcus-relay", 1, 9600)
    assert loaded.evsim.url
    assert loaded.network.kind == "proxy"


def test_defaults_for_a_qemu_board(tmp_path):
    loaded = rig.load(write(tmp_path, '[board]\nkind = "qemu-uboot"\n'))
    assert loaded.console.url == "" and loaded.console.baudrate == 115200
    assert loaded.power.kind == "virtual"
    assert loaded.network.kind == "none"
    assert loaded.open_power() is None and loaded.open_evsim() is None


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "[board] is missing"),
        ("[board]\n", "[board] is missing kind"),
        ('[board]\nkind = "fpga"\n', "kind = 'fpga' is not known"),
        ('[board]\nkind = "bench"\n', "[console] url is required"),
        ('board = "bench"\n', "[board] must be a table"),
        ('[board]\nkind = "virtual"\n[console]\nbaudrate = "fast"\n', "baudrate must be an"),
        ('[board]\nkind = "virtual"\n[power]\nkind = "lcus-relay"\n', "needs url"),
        (
            '[board]\nkind = "virtual"\n[power]\nkind = "lcus-relay"\nurl = "x"\nchannel = 9\n',
            "LCUS boards have 1..8",
        ),
        (
            '[board]\nkind = "bench"\n[console]\nurl = "loop://"\n[power]\nkind = "virtual"\n',
            "needs a virtual or qemu-uboot board",
        ),
        ('[board]\nkind = "virtual"\n[network]\nkind = "netem"\n', "proxy, none"),
    ],
)
def test_mistakes_are_named(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        rig.load(path)
    assert path in str(err.value)
    assert words in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        rig.load(str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        rig.load(write(tmp_path, "[board\n"))


def test_open_console_uses_the_url_the_board_gives(tmp_path):
    loaded = rig.load(write(tmp_path, '[board]\nkind = "virtual"\n'))
    with pytest.raises(ConfigError, match="url is empty"):
        loaded.open_console()
    with loaded.open_console(url="loop://") as console:
        console.send_line("hello")
        assert console.expect("hello", timeout=5)


def test_bench_rig_names_the_mcu_port_and_lines(tmp_path):
    """[mcu] of a rig file: the MCU's UART and BOOT0/NRST; the driver it opens enters the
    (emulated) ROM bootloader through those lines."""
    from hil import rig as rig_mod
    from hil.emulators.stm32_rom import PID, Stm32Rom

    example = rig_mod.load(os.path.join(os.path.dirname(rig_mod.__file__), "rigs",
                                        "bench-example.toml"))  # fmt: skip
    assert (example.mcu.protocol, example.mcu.boot0, example.mcu.nreset) == (
        "stm32-rom", "rts", "!dtr")  # fmt: skip
    with Stm32Rom(lines_dir=str(tmp_path / "lines")) as chip:
        path = tmp_path / "rig.toml"
        path.write_text('[board]\nkind = "virtual"\n[mcu]\nurl = "%s"\nboot0 = "gpio:%s"\n'
                        'nreset = "gpio:%s"\n' % (chip.port, tmp_path / "lines" / "boot0",
                                                   tmp_path / "lines" / "nrst"))  # fmt: skip
        rom = rig_mod.load(str(path)).open_mcu()
        rom.delay = lambda s: None
        rom.enter()
        assert rom.get_id() == PID
        rom.port.close()
    bad = tmp_path / "bad.toml"
    bad.write_text('[board]\nkind = "virtual"\n[mcu]\nprotocol = "jtag"\n')
    with pytest.raises(ConfigError, match="protocol"):
        rig_mod.load(str(bad))
