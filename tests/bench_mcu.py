"""`make bench` (MCU part): flash a 256 KiB image into the emulated MCUs at 115200 and
921600 baud and compare with the wire's limit, bytes x 10 bits / baud.

What is measured: our drivers (agent/components) against the emulators in realtime mode.
A pty has no baud rate, so the emulator models the wire (hil/emulators/base.py): every byte
costs its frame time at the baud the host set (AN3155 is 8E1, 11 bits; SMP 8N1, 10 bits),
one direction at a time, plus modelled flash erase/program times; the host's and the
emulator's own processing come on top. The ratio is therefore protocol overhead (commands,
ACKs, checksums, base64, the read-back), not a real UART's or MCU's speed: a bench with the
real chip (docs/components.md) gives that figure.

    python -m tests.bench_mcu [--size BYTES]
"""

import argparse
import os
import tempfile
import time

from agent.components.lines import GpioFile
from agent.components.stm32 import Stm32Rom, open_port
from hil.emulators import mcu_image, mcuboot_image
from hil.emulators.mcuboot_dev import McubootDevice
from hil.emulators.stm32_rom import FLASH
from hil.emulators.stm32_rom import Stm32Rom as Chip

BAUDS = (115200, 921600)


def stm32(size, baud, workdir):
    image = mcu_image.build("2.0.0", size=size)
    with Chip(lines_dir=os.path.join(workdir, "l%d" % baud), realtime=True) as chip:
        port = open_port(chip.port, baud)
        rom = Stm32Rom(port, GpioFile(os.path.join(chip.lines_dir, "boot0")),
                       GpioFile(os.path.join(chip.lines_dir, "nrst")))  # fmt: skip
        marks = {}
        start = time.monotonic()
        rom.enter()
        rom.flash(
            image, FLASH, lambda phase, done, total: marks.setdefault(phase, time.monotonic())
        )
        end = time.monotonic()
        port.close()
    return {"total": end - start, "write": marks["verify"] - marks["write"],
            "verify": end - marks["verify"]}  # fmt: skip


def mcuboot(size, baud):
    from agent.components.mcuboot import Mcuboot

    image = mcuboot_image.build(mcu_image.build("2.0.0", size=size - 80), "2.0.0")
    with McubootDevice(primary=mcuboot_image.build(mcu_image.build("1.0.0"), "1.0.0"),
                       realtime=True) as dev:  # fmt: skip
        mcu = Mcuboot(dev.port, baudrate=baud, timeout=10)
        start = time.monotonic()
        mcu.upload(image)
        return {"total": time.monotonic() - start}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.bench_mcu", description=__doc__)
    p.add_argument("--size", type=int, default=256 * 1024)
    args = p.parse_args(argv)
    size = args.size
    print("MCU flash of a %d KiB image; wire limit = bytes x 10 bits / baud" % (size // 1024))
    print("(emulated wire at the baud rate, see tests/bench_mcu.py; one run each: the "
          "modelled wire is deterministic, only scheduling noise remains)")  # fmt: skip
    print("%-34s %8s %9s %8s" % ("case", "baud", "seconds", "x limit"))
    with tempfile.TemporaryDirectory() as workdir:
        for baud in BAUDS:
            limit = size * 10.0 / baud
            r = stm32(size, baud, workdir)
            print("%-34s %8d %9.2f %8.2f" % ("STM32 AN3155 erase+write+verify", baud,
                                             r["total"], r["total"] / limit))  # fmt: skip
            print("%-34s %8d %9.2f %8.2f" % ("  of which write (8E1: floor 1.10)", baud,
                                             r["write"], r["write"] / limit))  # fmt: skip
            print("%-34s %8d %9.2f %8.2f" % ("  of which read-back verify", baud,
                                             r["verify"], r["verify"] / limit))  # fmt: skip
            r = mcuboot(size, baud)
            print("%-34s %8d %9.2f %8.2f" % ("MCUboot SMP upload (base64: 1.33)", baud,
                                             r["total"], r["total"] / limit))  # fmt: skip
            print("%-34s %8d %9.2f" % ("wire limit", baud, limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
