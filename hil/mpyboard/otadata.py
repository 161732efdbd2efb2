"""ESP-IDF's otadata rules, as its sources state them (app_update/esp_ota_ops.c,
bootloader_support/src/bootloader_common_loader.c and bootloader_utility.c), with
CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE set and no factory app.

The otadata partition holds two sectors; each starts with an esp_ota_select_entry_t:
    uint32 ota_seq | uint8 seq_label[20] | uint32 ota_state | uint32 crc     (little endian)
crc = esp_rom_crc32_le(UINT32_MAX, &ota_seq, 4). An entry is *valid* when its seq is not
0xFFFFFFFF, its state is neither INVALID nor ABORTED and its crc matches; the *active* entry is
the valid one with the larger seq (ties: entry 0). The app slot is (seq - 1) % app_count.

Invariant: every function here is pure (entries in, entries and sector writes out), so the
emulated esp32.Partition (MicroPython) and the emulated bootloader (CPython) share one set of
rules, and tests/micropython/test_otadata.py checks each rule on its own.
"""

import binascii
import struct

NEW = 0
PENDING_VERIFY = 1
VALID = 2
INVALID = 3
ABORTED = 4
UNDEFINED = 0xFFFFFFFF
STATE_NAMES = {
    NEW: "NEW", PENDING_VERIFY: "PENDING_VERIFY", VALID: "VALID", INVALID: "INVALID",
    ABORTED: "ABORTED", UNDEFINED: "UNDEFINED",
}  # fmt: skip

SECTOR = 0x1000
ENTRY_SIZE = 32
EMPTY_SEQ = 0xFFFFFFFF
FACTORY_INDEX = -1

# esp_err_t values as MicroPython raises them: OSError(-code).
ESP_FAIL = -1
ESP_ERR_INVALID_ARG = 0x102
ESP_ERR_NOT_FOUND = 0x105
ESP_ERR_OTA_VALIDATE_FAILED = 0x1503


def crc(seq):
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


class Entry:
    def __init__(self, seq=EMPTY_SEQ, state=UNDEFINED, crc_value=None):
        self.seq = seq
        self.state = state
        self.crc = crc(seq) if crc_value is None else crc_value

    def pack(self):
        return struct.pack("<I", self.seq) + b"\xff" * 20 + struct.pack("<II", self.state, self.crc)

    @classmethod
    def unpack(cls, raw):
        seq, state, crc_value = struct.unpack("<I20xII", bytes(raw[:ENTRY_SIZE]))
        return cls(seq, state, crc_value)

    def invalid(self):
        """bootloader_common_ota_select_invalid: not a bootable choice."""
        return self.seq == EMPTY_SEQ or self.state in (INVALID, ABORTED)

    def valid(self):
        return not self.invalid() and self.crc == crc(self.seq)

    def initial(self):
        """All-0xFF or a bad crc: what the bootloader treats as never written."""
        return self.seq == EMPTY_SEQ or self.crc != crc(self.seq)

    def __repr__(self):
        return "Entry(seq=%d, %s)" % (self.seq, STATE_NAMES.get(self.state, self.state))


def select(entries, flags, highest=True):
    """bootloader_common_select_otadata: index of the flagged entry with the max (or min)
    seq; -1 when none is flagged."""
    if flags[0] and flags[1]:
        pick = max if highest else min
        return 0 if pick(entries[0].seq, entries[1].seq) == entries[0].seq else 1
    for i in (0, 1):
        if flags[i]:
            return i
    return -1


def active(entries):
    """bootloader_common_get_active_otadata."""
    return select(entries, [entries[0].valid(), entries[1].valid()])


def slot_of(entry, app_count):
    return (entry.seq - 1) % app_count


def seq_for_slot(current_seq, slot, app_count):
    """compute_ota_seq_for_target_slot: the smallest seq >= current that maps to `slot`."""
    base = (slot + 1) % app_count
    i = 0
    while current_seq > base + i * app_count:
        i += 1
    return base + i * app_count


def set_boot(entries, slot, app_count):
    """esp_rewrite_ota_data for a validated image in `slot`: (sector, new entry) to write.
    The new entry is NEW (rollback enabled): the bootloader tries it once."""
    if not 0 <= slot < app_count:
        raise OSError(-ESP_ERR_INVALID_ARG)
    act = active(entries)
    if act == -1:
        return 0, Entry(slot + 1, NEW)
    if slot_of(entries[act], app_count) == slot:
        return act, Entry(entries[act].seq, NEW)
    return 1 - act, Entry(seq_for_slot(entries[act].seq, slot, app_count), NEW)


def mark_valid(entries, app_count):
    """esp_ota_current_ota_is_workable(true): (sector, entry) to write, or None when the
    active entry is VALID already; OSError(ESP_FAIL) when no entry is active (factory)."""
    act = active(entries)
    if act == -1 or app_count == 0:
        raise OSError(ESP_FAIL)
    if entries[act].state == VALID:
        return None
    return act, Entry(entries[act].seq, VALID)


def bootloader_select(entries, app_count):
    """bootloader_utility_get_selected_boot_partition (rollback on, no anti-rollback, no
    factory): (start index, initial contents?, [(sector, entry) written]).

    Any PENDING_VERIFY entry becomes ABORTED first: the app it names had its one boot and never
    confirmed itself, whatever reset ended that boot. The chosen entry, if NEW, becomes
    PENDING_VERIFY: this boot is its one chance."""
    writes = []
    entries = [Entry(e.seq, e.state, e.crc) for e in entries]
    for i in (0, 1):
        if entries[i].state == PENDING_VERIFY:
            entries[i].state = ABORTED
            writes.append((i, entries[i]))
    if (entries[0].invalid() and entries[1].invalid()) or app_count == 0:
        initial = entries[0].initial() and entries[1].initial()
        return 0, initial, writes  # no factory app: "trying OTA 0"
    act = active(entries)
    if act == -1:
        return FACTORY_INDEX, False, writes  # "will try all partitions"
    if entries[act].state == NEW:
        entries[act].state = PENDING_VERIFY
        writes.append((act, Entry(entries[act].seq, PENDING_VERIFY)))
    return slot_of(entries[act], app_count), False, writes


def load_order(start, app_count):
    """bootloader_utility_load_boot_image: the slots tried in order, from `start` down, then
    up (the factory index is skipped: this layout has no factory app)."""
    down = [i for i in range(start, FACTORY_INDEX - 1, -1) if i >= 0]
    return down + list(range(start + 1, app_count))


def actual_seq_entry(index):
    """set_actual_ota_seq: with an initial otadata the bootloader records what it booted."""
    return 0, Entry(index + 1, VALID)
