"""The emulated board's app image: what set_boot() and the bootloader validate.

A real ESP-IDF app starts with magic byte 0xE9 and carries a SHA-256 of the image appended
after its segments; esp_image_verify checks both before an image may be selected. The
emulation keeps exactly that check and replaces the segments with a small descriptor:

    0xE9 "EMU" | u32 LE descriptor length D | D bytes JSON {"version", "defects", ...}
    | u32 LE body length B | B bytes body | 32 bytes SHA-256 of everything before

Invariant: validate() reads at most the partition's size and answers the descriptor dict or
None; it runs on MicroPython (the emulated esp32 module) and CPython (bootloader, tests).
"""

import hashlib
import json
import struct

MAGIC = b"\xe9EMU"
CHUNK = 256  # hashed piece by piece: on MicroPython this runs on the app's heap


def build(descriptor, body=b""):
    """Image bytes for `descriptor` (CPython side: release tooling and tests)."""
    desc = json.dumps(descriptor).encode()
    head = MAGIC + struct.pack("<I", len(desc)) + desc + struct.pack("<I", len(body)) + body
    return head + hashlib.sha256(head).digest()


def validate(readinto_at, size):
    """The descriptor of the image read through readinto_at(offset, buf), which fills buf
    from offset, or None if invalid. One 256-byte buffer for the hash, filled again and
    again: ESP-IDF does this in C, off the app's heap, and here it runs on that heap when
    the agent arms a slot (set_boot), often with no 500 bytes in one piece left."""
    try:
        head = _read(readinto_at, 0, 8)
        if head[:4] != MAGIC:
            return None
        dlen = struct.unpack("<I", head[4:8])[0]
        if dlen > 4096 or 8 + dlen + 4 + 32 > size:
            return None
        desc = _read(readinto_at, 8, dlen)
        blen = struct.unpack("<I", _read(readinto_at, 8 + dlen, 4))[0]
        end = 8 + dlen + 4 + blen
        if end + 32 > size:
            return None
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        pos = 0
        while pos < end:
            n = min(CHUNK, end - pos)
            readinto_at(pos, view[:n])
            h.update(view[:n])
            pos += n
        if h.digest() != _read(readinto_at, end, 32):
            return None
        return json.loads(desc)
    except (ValueError, OSError, KeyError):
        return None


def _read(readinto_at, offset, n):
    buf = bytearray(n)
    readinto_at(offset, buf)
    return bytes(buf)
