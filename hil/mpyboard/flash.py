"""The virtual board's flash on the host: lay out partitions and load the emulation modules.

The emulation (esp32.py, otadata.py, appimage.py, bootloader.py) is written as top-level
MicroPython modules, because on the board `import esp32` must find it; this helper puts their
directory on CPython's path once and points them at one flash directory.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OTADATA_SIZE = 0x2000
DEFAULT_APP_SIZE = 0x200000  # 2 MiB per OTA slot, a common 4 MiB ESP32 layout


def modules(flash_dir):
    """(esp32, bootloader, otadata, appimage) modules, working on `flash_dir`."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import appimage
    import bootloader
    import esp32
    import otadata

    esp32.FLASH_DIR = flash_dir
    return esp32, bootloader, otadata, appimage


def create(flash_dir, factory_image, app_size=DEFAULT_APP_SIZE):
    """A factory-fresh flash: erased otadata, `factory_image` in ota_0, ota_1 erased."""
    os.makedirs(flash_dir, exist_ok=True)
    table = [
        ["otadata", 1, 0x00, OTADATA_SIZE],
        ["ota_0", 0, 0x10, app_size],
        ["ota_1", 0, 0x11, app_size],
    ]
    with open(os.path.join(flash_dir, "partitions.json"), "w") as f:
        json.dump(table, f)
    for label, _, _, size in table:
        with open(os.path.join(flash_dir, label + ".bin"), "wb") as f:
            f.truncate(0)
            f.write(b"\xff" * size)
    if len(factory_image) > app_size:
        raise ValueError("factory image larger than the app partition")
    with open(os.path.join(flash_dir, "ota_0.bin"), "r+b") as f:
        f.write(factory_image)
