# The virtual board's boot (MicroPython): what a ROMFS-enabled port does before main.py. Mount
# the mapped ROMFS image (hil/mpyboard/romboot.py) at /rom and import code from there and from
# the port's frozen modules (`ssl` is one) only, as a ROMFS port's sys.path does, so nothing is
# compiled onto the heap; then run the module named in MPYBOARD_MAIN (default: the
# firmware). Tests and the bench may add directories after /rom with MPYBOARD_PATH.
import os
import sys

import uctypes
import vfs

_address, _size = [int(x) for x in os.getenv("MPYBOARD_ROMFS").split(":")]
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(_address, _size)), "/rom")
sys.path.clear()
sys.path.append(".frozen")
sys.path.append("/rom")
for _extra in (os.getenv("MPYBOARD_PATH") or "").split(":"):
    if _extra:
        sys.path.append(_extra)
__import__(os.getenv("MPYBOARD_MAIN") or "firmware")
