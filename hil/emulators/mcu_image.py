"""The firmware image of the virtual board's MCUs and the little application it runs.

An image is `MAGIC, u32 image size, u32 header length, JSON header {"version", "defects"},
filler, CRC-32` (CRC of everything before it, little-endian), `size` bytes in all. The
emulated chip boots it only if magic and CRC are right, the way a real application's
startup check or a torn-flash hard fault would end; `defects` make the broken releases
the catalogue needs.

The application answers one ASCII line per command line (the charging stack speaks it):
    VERSION          -> VERSION <version>
    PING             -> PONG
    CONTACTOR ON|OFF -> OK CONTACTOR ON|OFF   (or ERR ... with the breaks-session defect)
    METER            -> OK METER <Wh>         (the meter MCU; ERR ... with breaks-session)
Defects: `breaks-session` (the contactor never reports closed, the meter stops counting),
`no-answer` (the application hangs at start and never answers).
"""

import json
import struct
import zlib

MAGIC = b"CUMCUAP1"
DEFECTS = ("breaks-session", "no-answer")


def build(version, defects=(), size=4096):
    unknown = [d for d in defects if d not in DEFECTS]
    if unknown:
        raise ValueError("unknown MCU defect(s) %s; known: %s" % (unknown, ", ".join(DEFECTS)))
    header = json.dumps({"version": version, "defects": list(defects)}).encode()
    head = MAGIC + struct.pack("<II", size, len(header)) + header
    if size < len(head) + 4:
        raise ValueError("an MCU image needs at least %d bytes" % (len(head) + 4))
    # Deterministic filler that is not all 0xFF, so an unwritten page shows in a read-back.
    filler = bytes((i * 7 + 3) & 0xFF for i in range(size - len(head) - 4))
    body = head + filler
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def parse(data):
    """{"version", "defects", "size"} of a valid image at the start of `data`, or None."""
    if len(data) < 20 or bytes(data[:8]) != MAGIC:
        return None
    size, n = struct.unpack("<II", bytes(data[8:16]))
    if not 20 + n <= size <= len(data):
        return None
    image = bytes(data[:size])
    if zlib.crc32(image[:-4]) & 0xFFFFFFFF != struct.unpack("<I", image[-4:])[0]:
        return None
    try:
        header = json.loads(image[16 : 16 + n])
    except ValueError:
        return None
    return {"version": header.get("version"), "defects": header.get("defects", []), "size": size}


class App:
    """The application's command interpreter; `reply(line) -> str or None` (None: silent)."""

    def __init__(self, info):
        self.info = info
        self.contactor = False
        self.energy_wh = 0

    def reply(self, line):
        defects = self.info.get("defects", [])
        if "no-answer" in defects:
            return None
        words = line.split()
        if words == ["VERSION"]:
            return "VERSION %s" % self.info.get("version")
        if words == ["PING"]:
            return "PONG"
        if words == ["METER"]:  # the energy meter MCU: one reading per session step
            if "breaks-session" in defects:
                return "ERR metering stopped"
            self.energy_wh += 125
            return "OK METER %d" % self.energy_wh
        if len(words) == 2 and words[0] == "CONTACTOR" and words[1] in ("ON", "OFF"):
            if words[1] == "ON" and "breaks-session" in defects:
                return "ERR contactor feedback missing"
            self.contactor = words[1] == "ON"
            return "OK CONTACTOR %s" % words[1]
        return "ERR unknown command %s" % (line or "(empty)")
