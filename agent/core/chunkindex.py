"""The chunk index of a format-2 payload: one entry per block of the installed image.

Layout (all integers big-endian), as signed through its sha256 in the manifest:

    8 bytes   magic b"CUIDX1\\n\\0"
    4 bytes   block size B (512..32768, a power of two)
    4 bytes   window W: bytes of the image before a block that prime its decompression
    8 bytes   installed size S (the payload's installed_size)
    4 bytes   count N = ceil(S / B)
    N * 8     block ids: the first 8 bytes of each block's SHA-256
    N * 2     stored length of each block's unit in the payload (0: nothing stored, the
              block is all zeros; equal to the block's length: stored raw; less: zstd with
              the W image bytes before the block as its dictionary)

Invariant: a ChunkIndex exists only if every field is in range and consistent with the
payload it belongs to (size, installed size, stored units adding up to the stored size),
so the installer can plan from it without further checks. Pure: no I/O, runs on MicroPython.
"""

import hashlib
import struct

from agent.core.errors import MalformedBundle

MAGIC = b"CUIDX1\n\0"
HEAD = ">8sIIQI"
HEAD_SIZE = 28
ID_SIZE = 8
MIN_BLOCK = 512
MAX_BLOCK = 32768
MAX_WINDOW = 1 << 20
MAX_COUNT = 1 << 26  # 64 Mi blocks: 256 GiB of 4 KiB blocks; bounds the parser's memory


def block_id(data):
    """The id of a block: the first ID_SIZE bytes of its SHA-256, as an int."""
    return int.from_bytes(hashlib.sha256(data).digest()[:ID_SIZE], "big")


def max_raw_size(installed_size):
    """Upper bound of an index's uncompressed size for a payload (bounds its inflating)."""
    count = min(installed_size // MIN_BLOCK + 1, MAX_COUNT)
    return HEAD_SIZE + count * (ID_SIZE + 2)


class ChunkIndex:
    def __init__(self, block_size, window, installed_size, ids, lengths):
        self.block_size = block_size
        self.window = window
        self.installed_size = installed_size
        self.ids = ids  # [int]
        self.lengths = lengths  # [int] stored bytes of each block's unit
        self.zero_id = block_id(bytes(block_size))
        self.offsets = []  # offset of each unit within the stored payload
        pos = 0
        for n in lengths:
            self.offsets.append(pos)
            pos += n
        self.stored_size = pos

    @property
    def count(self):
        return len(self.ids)

    def block_length(self, i):
        if i == len(self.ids) - 1:
            return self.installed_size - i * self.block_size
        return self.block_size


def _bad(what):
    return MalformedBundle("chunk index " + what, hint="the bundle is damaged; download it again")


def parse_index(raw, payload):
    """Index bytes (uncompressed) -> ChunkIndex for `payload`, or MalformedBundle."""
    raw = bytes(raw)
    if len(raw) < HEAD_SIZE:
        raise _bad("is %d bytes, shorter than its header" % len(raw))
    magic, block, window, size, count = struct.unpack(HEAD, raw[:HEAD_SIZE])
    if magic != MAGIC:
        raise _bad("has a bad magic")
    if not (MIN_BLOCK <= block <= MAX_BLOCK) or block & (block - 1):
        raise _bad("block size %d is not a power of two in %d..%d" % (block, MIN_BLOCK, MAX_BLOCK))
    if window > MAX_WINDOW:
        raise _bad("window %d is above %d" % (window, MAX_WINDOW))
    if size != payload.installed_size:
        raise _bad("is for %d bytes, the payload installs %d" % (size, payload.installed_size))
    if count != (size + block - 1) // block or count > MAX_COUNT:
        raise _bad("has %d blocks, %d bytes of %d-byte blocks need %d" % (count, size, block,
                   (size + block - 1) // block))  # fmt: skip
    if len(raw) != HEAD_SIZE + count * (ID_SIZE + 2):
        raise _bad("is %d bytes, %d blocks need %d" % (len(raw), count, HEAD_SIZE + count * 10))
    ids_end = HEAD_SIZE + count * ID_SIZE
    ids = [int.from_bytes(raw[p : p + ID_SIZE], "big") for p in range(HEAD_SIZE, ids_end, ID_SIZE)]
    lengths = list(struct.unpack(">%dH" % count, raw[ids_end:])) if count else []
    index = ChunkIndex(block, window, size, ids, lengths)
    _check_units(index)
    if index.stored_size != payload.size:
        raise _bad("stores %d bytes, the payload has %d" % (index.stored_size, payload.size))
    return index


def _check_units(index):
    """Every block has a unit no longer than itself, or none and the zero block's id."""
    for i, (bid, n) in enumerate(zip(index.ids, index.lengths)):
        if n > index.block_length(i):
            raise _bad("block %d stores %d bytes, more than its %d" % (i, n, index.block_length(i)))
        if n == 0 and (bid != index.zero_id or index.block_length(i) != index.block_size):
            raise _bad("block %d stores nothing but is not a zero block" % i)
