"""The emulated ESP-IDF second-stage bootloader: which app slot boots after a reset.

bootloader_utility_get_selected_boot_partition picks the start slot from otadata (aborting a
PENDING_VERIFY entry, arming a NEW one), then bootloader_utility_load_boot_image tries slots
in order until one holds a valid image; with all-0xFF otadata it records the slot it booted.

Invariant: otadata changes only through otadata.py's rules and the same erase-then-write
sector update the real bootloader performs. Runs on CPython (the board controller) and
MicroPython.
"""

import appimage
import esp32
import otadata


def boot():
    """(label of the app slot to run, its image descriptor), or (None, None) when no slot
    holds a valid image. Writes `running` for the emulated esp32 module."""
    apps = esp32._ota_apps()
    entries = esp32.read_otadata()
    start, initial, writes = otadata.bootloader_select(entries, len(apps))
    for sector, entry in writes:
        esp32.write_entry(sector, entry)
    for index in otadata.load_order(start, len(apps)):
        part = apps[index]
        descriptor = appimage.validate(part._readinto, part.size)
        if descriptor is None:
            continue
        if initial:
            esp32.write_entry(*otadata.actual_seq_entry(index))
        with open(esp32.FLASH_DIR + "/running", "w") as f:
            f.write(part.label)
        return part.label, descriptor
    return None, None
