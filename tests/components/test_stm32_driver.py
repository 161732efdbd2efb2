"""Our AN3155 driver against the emulator stm32flash was proven with: every command, NACKs,
timeouts, flipped bits on the line, readout protection, BOOT0/NRST through GPIO lines."""

import os

import pytest

from agent.components.lines import GpioFile
from agent.components.stm32 import (
    ERASE,
    EXT_ERASE,
    GET,
    MASS_ERASE,
    ReadProtected,
    Stm32Error,
    Stm32Rom,
    open_port,
)
from agent.core.errors import ReadbackMismatch, Rejected
from hil.emulators import mcu_image
from hil.emulators.stm32_rom import FLASH, PID
from hil.emulators.stm32_rom import Stm32Rom as Chip


def driver(chip, **kw):
    lines = chip.lines_dir
    kw.setdefault("timeout", 0.3)
    return Stm32Rom(open_port(chip.port, 115200), GpioFile(os.path.join(lines, "boot0")),
                    GpioFile(os.path.join(lines, "nrst")), delay=lambda s: None, **kw)  # fmt: skip


@pytest.fixture
def rom(stm32):
    d = driver(stm32)
    yield d
    d.port.close()


def test_enter_drives_boot0_and_nrst_then_syncs(stm32, rom):
    rom.enter()
    assert stm32.wait_for(lambda ev: ("boot", "bootloader") in ev)
    assert ("nrst", False) in stm32.events and ("nrst", True) in stm32.events
    version, commands = rom.version, rom.commands
    assert version == 0x31 and GET in commands and EXT_ERASE in commands
    assert rom.get_id() == PID
    assert rom.get_version()[0] == 0x31


def test_write_read_erase_go(stm32, rom):
    rom.enter()
    rom.erase([0])
    rom.write_memory(FLASH, b"\x01\x02\x03\x04" * 64)
    assert rom.read_memory(FLASH, 256) == b"\x01\x02\x03\x04" * 64
    rom.write_memory(FLASH + 256, b"\xaa\xbb")  # padded to a word with 0xFF
    assert rom.read_memory(FLASH + 256, 4) == b"\xaa\xbb\xff\xff"
    rom.erase([0])
    assert rom.read_memory(FLASH, 8) == b"\xff" * 8
    image = mcu_image.build("3.1.0", size=1024)
    rom.write_memory(FLASH, image[:256])
    for off in range(256, 1024, 256):
        rom.write_memory(FLASH + off, image[off : off + 256])
    rom.go(FLASH)
    assert stm32.wait_for(lambda ev: ("go",) in ev)
    rom.port.write(b"VERSION\n")
    assert rom.port.readline() == b"VERSION 3.1.0\n"


@pytest.mark.parametrize("extended", [True, False])
def test_page_and_mass_erase_with_either_erase_command(tmp_path, extended):
    with Chip(lines_dir=str(tmp_path / "l"), extended_erase=extended) as chip:
        rom = driver(chip)
        rom.enter()
        assert (EXT_ERASE in rom.commands) == extended and (ERASE in rom.commands) != extended
        chip.flash[:8192] = b"\x00" * 8192
        rom.flash(mcu_image.build("1.0.4", size=3000), FLASH)  # pages 0 and 1
        assert [e for e in chip.events if e[0] == "erase"] == [("erase", (0, 1))]
        assert bytes(chip.flash[4096:8192]) == b"\x00" * 4096  # pages 2, 3 untouched
        rom.erase(MASS_ERASE)
        assert bytes(chip.flash) == b"\xff" * len(chip.flash)
        rom.port.close()


def test_flash_erases_writes_and_verifies_then_starts_the_application(stm32, rom):
    image = mcu_image.build("2.4.0", size=5000)
    phases = []
    rom.enter()
    rom.flash(image, FLASH, lambda phase, done, total: phases.append(phase))
    assert bytes(stm32.flash[:5000]) == image
    assert phases[0] == "erase" and "write" in phases and phases[-1] == "verify"
    rom.start(FLASH)
    assert stm32.wait_for(lambda ev: ev[-1] == ("boot", "app"))
    rom.port.write(b"VERSION\n")
    assert rom.port.readline() == b"VERSION 2.4.0\n"


def test_bad_checksum_is_nacked_and_retried(stm32, rom):
    rom.enter()
    # Byte 0 after this point is the write command; byte 7 its checksum-covered address.
    for at in (1, 6, 9, 40):  # complement, address checksum, length, data
        stm32.faults.append({"kind": "flip-rx", "at": stm32.rx_count + at})
        before = rom.retried
        rom.erase([1])
        rom.write_memory(FLASH + 2048, bytes(range(256)))
        assert rom.retried > before
        assert rom.read_memory(FLASH + 2048, 256) == bytes(range(256))


def test_flipped_ack_and_lost_reply_recover_by_reset_and_resync(stm32, rom):
    image = mcu_image.build("1.0.1", size=3000)
    rom.enter()
    stm32.faults.append({"kind": "flip-tx", "at": stm32.tx_count + 40})
    stm32.faults.append({"kind": "mute-tx", "at": stm32.tx_count + 90})
    rom.flash(image, FLASH)
    assert rom.retried >= 2
    assert bytes(stm32.flash[:3000]) == image


def test_flipped_bit_in_read_data_is_read_again(stm32, rom):
    image = mcu_image.build("1.0.2", size=1024)
    rom.enter()
    rom.flash(image, FLASH)
    stm32.faults.append({"kind": "flip-tx", "at": stm32.tx_count + 100})
    before = rom.retried
    rom.verify(image, FLASH)  # one block read twice, the second time right
    assert rom.retried == before + 1


def test_flash_that_really_differs_fails_verification(stm32, rom):
    image = mcu_image.build("1.0.3", size=1024)
    rom.enter()
    rom.flash(image, FLASH)
    stm32.flash[700] ^= 0xFF  # a cell that lost its charge
    with pytest.raises(ReadbackMismatch):
        rom.verify(image, FLASH)


def test_silent_chip_times_out():
    with Chip() as chip:  # no bootloader: BOOT0 low and nothing valid in flash
        rom = Stm32Rom(open_port(chip.port), timeout=0.05, retries=1, delay=lambda s: None)
        with pytest.raises(Stm32Error, match="no answer"):
            rom.sync()
        rom.port.close()


def test_readout_protection_refuses_reads_and_writes(tmp_path):
    with Chip(lines_dir=str(tmp_path / "l"), rdp=True) as chip:
        rom = driver(chip, retries=1)
        rom.enter()
        with pytest.raises(ReadProtected):
            rom.read_memory(FLASH, 16)
        with pytest.raises(ReadProtected):
            rom.flash(mcu_image.build("1.0.0", size=512), FLASH)
        assert not [e for e in chip.events if e[0] in ("write", "erase")]
        assert issubclass(ReadProtected, Rejected)
        rom.readout_unprotect()  # mass erase; the chip resets
        assert chip.wait_for(lambda ev: ("rdp", 0) in ev)
        rom.enter()
        rom.flash(mcu_image.build("1.0.0", size=512), FLASH)
        rom.port.close()


def test_image_outside_the_flash_is_refused_before_erasing(stm32, rom):
    rom.enter()
    with pytest.raises(Rejected, match="does not fit"):
        rom.flash(b"\x00" * 4096, FLASH + 512 * 1024 - 2048)
    with pytest.raises(Rejected, match="page"):
        rom.flash(b"\x00" * 16, FLASH + 100)
    assert not [e for e in stm32.events if e[0] == "erase"]
