"""Power cut at every byte of a redundant U-Boot env write: old state or new, never a mix.

We record the exact writes UBootEnv issues (device, offset, bytes, in order), then rebuild the
flash image as it would be if power failed after the first k bytes of that write stream, for
every k, and read it back with our reader (every k) and fw_printenv (a sample of k).
"""

import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.errors import BootEnvError
from bootloader_iface import uboot_env
from bootloader_iface.uboot_env import FileIO, UBootEnv, encode_copy
from tests.bootloader.conftest import have

SIZE = 0x1000
OLD = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3", "bootcmd": "run x"}
CHANGES = {"BOOT_ORDER": "B A", "BOOT_B_LEFT": "1", "new_var": "y" * 300}
NEW = dict(OLD, **CHANGES)


class MemIO(FileIO):
    """The flash as a bytearray; records every write in order."""

    def __init__(self, image):
        self.image = bytearray(image)
        self.log = []

    def read(self, device, offset, size):
        return bytes(self.image[offset : offset + size])

    def write(self, device, offset, data):
        self.log.append((offset, bytes(data)))
        self.image[offset : offset + len(data)] = data


def copies():
    return [
        {"device": "mem", "offset": 0, "size": SIZE, "sector_size": 0, "sectors": 0},
        {"device": "mem", "offset": SIZE, "size": SIZE, "sector_size": 0, "sectors": 0},
    ]


def prepared_image(prior_writes):
    """A redundant env holding OLD after some history, so either copy can be the active one."""
    io = MemIO(b"\xff" * 2 * SIZE)
    env = UBootEnv(copies=copies(), io=io)
    env.format({"history": "0"})
    for i in range(prior_writes):
        env.write({"history": str(i + 1), "junk": "z" * (50 * i)})
    env.write_all(OLD, *env.read_state()[1:])
    return bytes(io.image)


def torn(original, log, k):
    """The image after a power cut once k bytes of the write stream reached the medium."""
    image = bytearray(original)
    for offset, data in log:
        part = data[: max(0, k)]
        image[offset : offset + len(part)] = part
        k -= len(data)
        if k <= 0:
            break
    return bytes(image)


def read_mem(image):
    return UBootEnv(copies=copies(), io=MemIO(image)).read()


def fw_printenv_image(tmp_path, image):
    have("fw_printenv")
    path = tmp_path / "flash.img"
    path.write_bytes(image)
    cfg = tmp_path / "fw_env.config"
    cfg.write_text("%s 0x0 0x%x\n%s 0x%x 0x%x\n" % (path, SIZE, path, SIZE, SIZE))
    out = subprocess.run(["fw_printenv", "-c", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


@pytest.mark.parametrize("prior_writes", [0, 1, 2], ids=["active0-fresh", "active1", "active0"])
def test_power_cut_at_every_byte_of_a_redundant_write(tmp_path, prior_writes):
    original = prepared_image(prior_writes)
    assert read_mem(original) == OLD
    io = MemIO(original)
    UBootEnv(copies=copies(), io=io).write(CHANGES)
    total = sum(len(data) for _, data in io.log)
    assert total > SIZE  # the whole inactive copy, then the flag byte
    assert io.log[-1][1] in (bytes([n]) for n in range(256))  # the commit is one byte

    seen = [read_mem(torn(original, io.log, k)) for k in range(total + 1)]
    # Stronger than "old or new": old until the very last byte (the flag), then new.
    assert all(state == OLD for state in seen[:-1])
    assert seen[-1] == NEW

    sample = sorted(set([0, 1, 4, 5, 6, total - 2, total - 1, total] + list(range(0, total, 331))))
    for k in sample:
        expected = NEW if k == total else OLD
        assert fw_printenv_image(tmp_path, torn(original, io.log, k)) == expected, k


def test_power_cut_while_naively_writing_the_whole_copy_with_its_new_flag(tmp_path):
    """The model from the issue: the new copy, flag included, written front to back."""
    original = prepared_image(1)
    _, active, flags = UBootEnv(copies=copies(), io=MemIO(original)).read_state()
    target = 1 - active
    region = encode_copy(NEW, SIZE, True, (flags[active] + 1) % 256)
    log = [(target * SIZE, region)]
    for k in range(len(region) + 1):
        assert read_mem(torn(original, log, k)) in (OLD, NEW), k
    assert read_mem(torn(original, log, len(region))) == NEW
    for k in (0, 4, 5, 100, len(region) - 1, len(region)):
        assert fw_printenv_image(tmp_path, torn(original, log, k)) in (OLD, NEW), k


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, SIZE // 512 - 1)))
def test_power_cut_with_sectors_landing_in_any_order(sectors):
    """A device may persist the 512-byte sectors of one write in any order before a cut."""
    original = prepared_image(1)
    io = MemIO(original)
    UBootEnv(copies=copies(), io=io).write(CHANGES)
    offset, data = io.log[0]  # step 1: the inactive copy under its old flag
    image = bytearray(original)
    for s in sectors:
        image[offset + s * 512 : offset + (s + 1) * 512] = data[s * 512 : (s + 1) * 512]
    assert read_mem(bytes(image)) == OLD


def test_power_cut_before_rename_leaves_single_copy_file_intact(tmp_path, monkeypatch):
    image = tmp_path / "uboot.env"
    image.write_bytes(b"\xff" * SIZE)
    cfg = tmp_path / "fw_env.config"
    cfg.write_text("%s 0x0 0x%x\n" % (image, SIZE))
    UBootEnv(str(cfg)).format(OLD)

    def cut(*args):
        raise OSError("power cut")

    monkeypatch.setattr(uboot_env.os, "replace", cut)
    with pytest.raises(BootEnvError, match="power cut"):
        UBootEnv(str(cfg)).write(CHANGES)
    monkeypatch.undo()
    assert UBootEnv(str(cfg)).read() == OLD
    leftovers = [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert leftovers  # the half-made temp file is all that a cut leaves behind


def test_torn_copy_alone_is_not_mistaken_for_an_env():
    """Both copies torn (e.g. a factory flash cut twice): refuse, do not guess."""
    original = prepared_image(0)
    image = bytearray(original)
    image[10] ^= 0xFF
    image[SIZE + 10] ^= 0xFF
    with pytest.raises(BootEnvError):
        read_mem(bytes(image))
