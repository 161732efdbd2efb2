"""The STM32 emulator proven against a real third-party host: Debian's stm32flash.

Before our own AN3155 driver is tested against the emulator, stm32flash must be able to
write, verify and read a file through it, and must be refused by readout protection. The
pty forces 8N1 (Linux ptys drop PARENB), so stm32flash runs with `-m 8n1`: every AN3155
byte is the same, only the parity bit a pty cannot carry is missing."""

import subprocess

from hil.emulators import mcu_image
from hil.emulators.stm32_rom import FLASH


def run(stm32flash, port, *args):
    argv = [stm32flash, "-m", "8n1", "-b", "115200"] + list(args) + [port]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_stm32flash_writes_verifies_and_reads_back(stm32, tty_alias, stm32flash, tmp_path):
    image = mcu_image.build("2.0.0", size=6000)
    (tmp_path / "fw.bin").write_bytes(image)
    stm32.reset(boot0=True)
    port = tty_alias(stm32.port)
    done = run(stm32flash, port, "-w", str(tmp_path / "fw.bin"), "-v", "-S", "0x%08x" % FLASH)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "STM32G47xxx/48xxx" in done.stdout  # it recognised the chip from Get ID
    assert "Wrote and verified address 0x08001770" in done.stdout
    assert bytes(stm32.flash[: len(image)]) == image
    done = run(stm32flash, port, "-r", str(tmp_path / "back.bin"), "-S", "0x%08x:6000" % FLASH)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "back.bin").read_bytes() == image
    erased = [e for e in stm32.events if e[0] == "erase"]
    assert erased and erased[0][1] == (0, 1, 2)  # Extended Erase of the pages it needs only


def test_stm32flash_is_refused_by_readout_protection(tmp_path, tty_alias, stm32flash):
    from hil.emulators.stm32_rom import Stm32Rom

    with Stm32Rom(rdp=True) as chip:
        chip.reset(boot0=True)
        done = run(stm32flash, tty_alias(chip.port), "-r", str(tmp_path / "x.bin"),
                   "-S", "0x%08x:256" % FLASH)  # fmt: skip
        assert done.returncode != 0
        assert "Failed to read memory" in done.stdout + done.stderr, done.stdout + done.stderr
        assert not [e for e in chip.events if e[0] in ("write", "erase")]
