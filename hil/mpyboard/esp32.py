"""An emulation of MicroPython's `esp32` module (Partition only) on files, for the virtual board.

The API follows the esp32 stubs of MicroPython 1.29 (micropython-esp32-esp32-generic-stubs):
Partition(id, block_size=4096), Partition.find(type, subtype, label), info(), readblocks,
writeblocks, ioctl, set_boot(), get_next_update(), Partition.mark_app_valid_cancel_rollback(),
and the constants BOOT, RUNNING, TYPE_APP, TYPE_DATA. The flash is a directory (ESP32EMU_FLASH):
partitions.json ([label, type, subtype, size] rows), one LABEL.bin per partition, and
`running` (the label the emulated bootloader started). Writes behave like NOR flash: they can
only clear bits, so a write to a block that was not erased corrupts it, as on the chip.

Invariant: set_boot() and mark_app_valid_cancel_rollback() change otadata only through the rules
in otadata.py (ESP-IDF's), and set_boot() refuses an image that does not validate, as
esp_ota_set_boot_partition does. Runs on MicroPython and CPython.
"""

import json
import os

import appimage
import otadata

FLASH_DIR = os.getenv("ESP32EMU_FLASH") or "flash"
SUBTYPE_OTA_0 = 0x10
SUBTYPE_DATA_OTA = 0x00
ERASED = 0xFF


def _table():
    with open(FLASH_DIR + "/partitions.json") as f:
        return json.load(f)


def _running_label():
    with open(FLASH_DIR + "/running") as f:
        return f.read().strip()


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=4096):
        if id == Partition.RUNNING:
            id = _running_label()
        elif id == Partition.BOOT:
            id = _boot_label()
        rows = [r for r in _table() if r[0] == id]
        if not rows:
            raise ValueError("partition not found")
        self.label, self.type, self.subtype, self.size = rows[0]
        self.block_size = block_size
        self.path = "%s/%s.bin" % (FLASH_DIR, self.label)

    def __repr__(self):
        return "<Partition type=%d, subtype=%d, label=%s>" % (self.type, self.subtype, self.label)

    def __eq__(self, other):
        return isinstance(other, Partition) and other.label == self.label

    @staticmethod
    def find(type=0, subtype=0xFF, label=None):
        out = []
        for name, t, st, _ in _table():
            if t == type and subtype in (0xFF, st) and label in (None, name):
                out.append(Partition(name))
        return out

    def info(self):
        return (self.type, self.subtype, 0, self.size, self.label, False)

    # -- block protocol ---------------------------------------------------------------------

    def _read(self, offset, n):
        if offset < 0 or offset + n > self.size:
            raise OSError(22)  # EINVAL: out of the partition
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(n)
        return data + bytes([ERASED]) * (n - len(data))

    def _write(self, offset, data):
        old = self._read(offset, len(data))
        new = bytes(a & b for a, b in zip(old, data))  # NOR flash: bits only ever clear
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(new)

    def _erase(self, offset, n):
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(bytes([ERASED]) * n)

    def readblocks(self, block_num, buf, offset=0):
        data = self._read(block_num * self.block_size + offset, len(buf))
        buf[:] = data
        return True

    def writeblocks(self, block_num, buf, offset=None):
        start = block_num * self.block_size
        if offset is None:
            # The first form erases the blocks it writes (the esp32 port does the same).
            n = len(buf) + (-len(buf)) % self.block_size
            self._erase(start, n)
            offset = 0
        self._write(start + offset, bytes(buf))

    def ioctl(self, op, arg=None):
        if op == 4:  # BLOCK_COUNT
            return self.size // self.block_size
        if op == 5:  # BLOCK_SIZE
            return self.block_size
        if op == 6:  # BLOCK_ERASE
            self._erase(arg * self.block_size, self.block_size)
            return 0
        return None  # INIT, DEINIT, SYNC: nothing to do on files

    # -- OTA --------------------------------------------------------------------------------

    def get_next_update(self):
        """esp_ota_get_next_update_partition(self): the next OTA app slot after this one."""
        apps = _ota_apps()
        if not apps:
            raise OSError(-otadata.ESP_ERR_NOT_FOUND)
        labels = [p.label for p in apps]
        if self.label in labels:
            return apps[(labels.index(self.label) + 1) % len(apps)]
        return apps[0]

    def set_boot(self):
        if self.type != Partition.TYPE_APP or self.subtype < SUBTYPE_OTA_0:
            raise OSError(-otadata.ESP_ERR_INVALID_ARG)
        if appimage.validate(self._read, self.size) is None:
            raise OSError(-otadata.ESP_ERR_OTA_VALIDATE_FAILED)
        entries = read_otadata()
        sector, entry = otadata.set_boot(entries, self.subtype - SUBTYPE_OTA_0, len(_ota_apps()))
        write_entry(sector, entry)

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        change = otadata.mark_valid(read_otadata(), len(_ota_apps()))
        if change is not None:
            write_entry(change[0], change[1])


def _ota_apps():
    apps = Partition.find(Partition.TYPE_APP)
    return sorted([p for p in apps if p.subtype >= SUBTYPE_OTA_0], key=lambda p: p.subtype)


def _otadata_partition():
    found = Partition.find(Partition.TYPE_DATA, SUBTYPE_DATA_OTA)
    if not found:
        raise OSError(-otadata.ESP_ERR_NOT_FOUND)
    return found[0]


def read_otadata():
    part = _otadata_partition()
    return [
        otadata.Entry.unpack(part._read(i * otadata.SECTOR, otadata.ENTRY_SIZE)) for i in (0, 1)
    ]


def write_entry(sector, entry):
    """Erase the sector, then write the entry: the order esp_ota_ops.c uses."""
    part = _otadata_partition()
    part._erase(sector * otadata.SECTOR, otadata.SECTOR)
    part._write(sector * otadata.SECTOR, entry.pack())


def _boot_label():
    """esp_ota_get_boot_partition: what the bootloader would pick from otadata now."""
    apps = _ota_apps()
    entries = read_otadata()
    if (entries[0].invalid() and entries[1].invalid()) or not apps:
        return apps[0].label
    act = otadata.active(entries)
    if act == -1:
        return apps[0].label
    return apps[otadata.slot_of(entries[act], len(apps))].label
