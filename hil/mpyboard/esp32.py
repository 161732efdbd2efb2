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

Heap: on the chip all of this is C and takes none of the app's heap. On MicroPython the
emulation imports its helpers (otadata.py, appimage.py) per call and forgets them after it
(_off_heap), so what stays on the app's heap is this module alone; and on the virtual board
(ESP32EMU_HOST set) set_boot() and mark_app_valid_cancel_rollback() run in a CPython process
of the board controller (esp32host.py): their image check and otadata rules, imported into
the app's heap at each call, failed for want of heap at 96K-98K where the chip's C code
needs none. Every name here is heap on the app's side: keep this file lean.
"""

import json
import os
import sys

FLASH_DIR = os.getenv("ESP32EMU_FLASH") or "flash"
HOST = os.getenv("ESP32EMU_HOST")  # runs esp32host.py in the board controller (above)
SUBTYPE_OTA_0 = 0x10
SUBTYPE_DATA_OTA = 0x00
ERASED = 0xFF
PIECE = 256


def _rules():
    import otadata

    return otadata


def _off_heap():
    if sys.implementation.name == "micropython":
        for name in ("otadata", "appimage"):
            sys.modules.pop(name, None)


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
            _off_heap()
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

    # On the chip these are C (spi_flash) and take none of the app's heap; here they work in
    # PIECE-byte steps through one small scratch buffer, so the emulation's own heap use does
    # not count against the agent's budget in a meaningful way.

    def _check(self, offset, n):
        if offset < 0 or offset + n > self.size:
            raise OSError(22)  # EINVAL: out of the partition

    def _read(self, offset, n):
        buf = bytearray(n)
        self._readinto(offset, buf)
        return bytes(buf)

    def _readinto(self, offset, buf):
        self._check(offset, len(buf))
        with open(self.path, "rb") as f:
            f.seek(offset)
            got = f.readinto(buf) or 0
        for i in range(got, len(buf)):
            buf[i] = ERASED

    def _write(self, offset, data):
        """NOR flash: a write only ever clears bits (new = old AND data)."""
        self._check(offset, len(data))
        view = memoryview(data)
        old = bytearray(PIECE)
        ones = b"\xff" * PIECE
        with open(self.path, "r+b") as f:
            for start in range(0, len(data), PIECE):
                n = min(PIECE, len(data) - start)
                f.seek(offset + start)
                got = f.readinto(memoryview(old)[:n]) or 0
                if got == n and old[:n] == ones[:n]:  # erased (the usual case): data as is
                    piece = view[start : start + n]
                else:
                    for i in range(n):
                        old[i] = (old[i] if i < got else ERASED) & view[start + i]
                    piece = memoryview(old)[:n]
                f.seek(offset + start)
                f.write(piece)

    def _erase(self, offset, n):
        self._check(offset, n)
        ones = b"\xff" * PIECE
        with open(self.path, "r+b") as f:
            f.seek(offset)
            for start in range(0, n, PIECE):
                f.write(ones[: min(PIECE, n - start)])

    def readblocks(self, block_num, buf, offset=0):
        self._readinto(block_num * self.block_size + offset, buf)
        return True

    def writeblocks(self, block_num, buf, offset=None):
        start = block_num * self.block_size
        if offset is None:
            # The first form erases the blocks it writes (the esp32 port does the same).
            n = len(buf) + (-len(buf)) % self.block_size
            self._erase(start, n)
            offset = 0
        self._write(start + offset, buf)

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
            raise OSError(-_rules().ESP_ERR_NOT_FOUND)
        labels = [p.label for p in apps]
        if self.label in labels:
            return apps[(labels.index(self.label) + 1) % len(apps)]
        return apps[0]

    def set_boot(self):
        if HOST:
            _host("set_boot " + self.label)
            return
        import appimage

        otadata = _rules()
        try:
            if self.type != Partition.TYPE_APP or self.subtype < SUBTYPE_OTA_0:
                raise OSError(-otadata.ESP_ERR_INVALID_ARG)
            if appimage.validate(self._readinto, self.size) is None:
                raise OSError(-otadata.ESP_ERR_OTA_VALIDATE_FAILED)
            entries = read_otadata()
            slot = self.subtype - SUBTYPE_OTA_0
            sector, entry = otadata.set_boot(entries, slot, len(_ota_apps()))
            write_entry(sector, entry)
        finally:
            _off_heap()

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        if HOST:
            _host("mark_valid")
            return
        try:
            change = _rules().mark_valid(read_otadata(), len(_ota_apps()))
            if change is not None:
                write_entry(change[0], change[1])
        finally:
            _off_heap()


def _host(args):
    status = os.system(HOST + " " + args) >> 8  # esp32host.py: 0, or an error's place
    if status:
        raise OSError(-(0x102, 0x1503, 0x105)[status - 1] if status < 4 else -1)


def _ota_apps():
    apps = Partition.find(Partition.TYPE_APP)
    return sorted([p for p in apps if p.subtype >= SUBTYPE_OTA_0], key=lambda p: p.subtype)


def _otadata_partition():
    found = Partition.find(Partition.TYPE_DATA, SUBTYPE_DATA_OTA)
    if not found:
        raise OSError(-_rules().ESP_ERR_NOT_FOUND)
    return found[0]


def read_otadata():
    otadata = _rules()
    part = _otadata_partition()
    return [
        otadata.Entry.unpack(part._read(i * otadata.SECTOR, otadata.ENTRY_SIZE)) for i in (0, 1)
    ]


def write_entry(sector, entry):
    """Erase the sector, then write the entry: the order esp_ota_ops.c uses."""
    otadata = _rules()
    part = _otadata_partition()
    part._erase(sector * otadata.SECTOR, otadata.SECTOR)
    part._write(sector * otadata.SECTOR, entry.pack())


def _boot_label():
    """esp_ota_get_boot_partition: what the bootloader would pick from otadata now."""
    otadata = _rules()
    apps = _ota_apps()
    entries = read_otadata()
    if (entries[0].invalid() and entries[1].invalid()) or not apps:
        return apps[0].label
    act = otadata.active(entries)
    if act == -1:
        return apps[0].label
    return apps[otadata.slot_of(entries[act], len(apps))].label
