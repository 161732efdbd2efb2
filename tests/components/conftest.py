"""Fixtures for the MCU drivers and emulators: an emulated chip on a pty with its lines."""

import os
import shutil
import uuid

import pytest

from hil.emulators.stm32_rom import Stm32Rom


@pytest.fixture
def stm32(tmp_path):
    """An STM32 (ROM bootloader + application) on a pty; BOOT0/NRST are FIFOs."""
    with Stm32Rom(
        lines_dir=str(tmp_path / "lines"), flash_path=str(tmp_path / "flash.bin")
    ) as chip:
        yield chip


@pytest.fixture
def tty_alias():
    """stm32flash opens only /dev/tty* names: a /dev/ttyCU... symlink to a pty, removed after.
    Needs root (CI and `make test` run as root here); skipped with the reason otherwise."""
    made = []

    def alias(port):
        if not os.access("/dev", os.W_OK):
            pytest.skip("stm32flash accepts only /dev/tty* ports; creating an alias needs root")
        path = "/dev/ttyCU%s" % uuid.uuid4().hex[:8]
        os.symlink(port, path)
        made.append(path)
        return path

    yield alias
    for path in made:
        os.unlink(path)


@pytest.fixture
def stm32flash():
    path = shutil.which("stm32flash")
    if not path:
        pytest.skip("stm32flash is not installed (make test installs it from Debian)")
    return path
