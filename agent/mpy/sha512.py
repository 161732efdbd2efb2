"""SHA-512 (FIPS 180-4) for Ed25519, in plain integers: MicroPython's hashlib has no sha512.

Invariant: digest() equals hashlib.sha512 on CPython for every input (tests compare them).
Slow by design (64-bit words are bigints on a 32-bit MCU) but only signed headers, a few KiB,
ever pass through it.
"""

from struct import pack_into, unpack_from

_M = 0xFFFFFFFFFFFFFFFF

# fmt: off
# The 80 round constants as big-endian 64-bit words: kept as bytes (read in place from flash
# when precompiled), not 80 integers, most of which would be bigints on the heap.
_K = bytes.fromhex(
    "428a2f98d728ae227137449123ef65cdb5c0fbcfec4d3b2fe9b5dba58189dbbc"
    "3956c25bf348b53859f111f1b605d019923f82a4af194f9bab1c5ed5da6d8118"
    "d807aa98a303024212835b0145706fbe243185be4ee4b28c550c7dc3d5ffb4e2"
    "72be5d74f27b896f80deb1fe3b1696b19bdc06a725c71235c19bf174cf692694"
    "e49b69c19ef14ad2efbe4786384f25e30fc19dc68b8cd5b5240ca1cc77ac9c65"
    "2de92c6f592b02754a7484aa6ea6e4835cb0a9dcbd41fbd476f988da831153b5"
    "983e5152ee66dfaba831c66d2db43210b00327c898fb213fbf597fc7beef0ee4"
    "c6e00bf33da88fc2d5a79147930aa72506ca6351e003826f142929670a0e6e70"
    "27b70a8546d22ffc2e1b21385c26c9264d2c6dfc5ac42aed53380d139d95b3df"
    "650a73548baf63de766a0abb3c77b2a881c2c92e47edaee692722c851482353b"
    "a2bfe8a14cf10364a81a664bbc423001c24b8b70d0f89791c76c51a30654be30"
    "d192e819d6ef5218d69906245565a910f40e35855771202a106aa07032bbd1b8"
    "19a4c116b8d2d0c81e376c085141ab532748774cdf8eeb9934b0bcb5e19b48a8"
    "391c0cb3c5c95a634ed8aa4ae3418acb5b9cca4f7763e373682e6ff3d6b2b8a3"
    "748f82ee5defb2fc78a5636f43172f6084c87814a1f0ab728cc702081a6439ec"
    "90befffa23631e28a4506cebde82bde9bef9a3f7b2c67915c67178f2e372532b"
    "ca273eceea26619cd186b8c721c0c207eada7dd6cde0eb1ef57d4f7fee6ed178"
    "06f067aa72176fba0a637dc5a2c898a6113f9804bef90dae1b710b35131c471b"
    "28db77f523047d8432caab7b40c724933c9ebe0a15c9bebc431d67c49c100d4c"
    "4cc5d4becb3e42b6597f299cfc657e2a5fcb6fab3ad6faec6c44198c4a475817"
)
_H0 = (
    0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
    0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
)
# fmt: on


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M


def _compress(h, block, w):
    """One 128-byte block (a memoryview) into the state `h` (a list, updated in place), with
    `w` a reused 640-byte schedule. The schedule's 80 words stay packed in bytes: as 80 ints,
    most would be bigints (above 2**62 here, 2**30 on a 32-bit MCU), 4 KiB of live heap."""
    w[0:128] = block
    for t in range(128, 640, 8):
        x, y = unpack_from(">Q", w, t - 120)[0], unpack_from(">Q", w, t - 16)[0]
        s0 = _rotr(x, 1) ^ _rotr(x, 8) ^ (x >> 7)
        s1 = _rotr(y, 19) ^ _rotr(y, 61) ^ (y >> 6)
        x, y = unpack_from(">Q", w, t - 128)[0], unpack_from(">Q", w, t - 56)[0]
        pack_into(">Q", w, t, (x + s0 + y + s1) & _M)
    a, b, c, d, e, f, g, hh = h
    for t in range(0, 640, 8):
        k = unpack_from(">Q", _K, t)[0] + unpack_from(">Q", w, t)[0]
        t1 = hh + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ ((e ^ _M) & g)) + k
        t1 &= _M
        t2 = (_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))
        hh, g, f, e = g, f, e, (d + t1) & _M
        d, c, b, a = c, b, a, (t1 + t2) & _M
    for i, x in enumerate((a, b, c, d, e, f, g, hh)):
        h[i] = (h[i] + x) & _M


class sha512:
    """hashlib-style: update(data) any number of times, then digest(). Input is consumed
    through one 128-byte buffer (a small board's heap never holds a copy of the message)."""

    def __init__(self, data=b""):
        self._h = list(_H0)
        self._w = bytearray(640)
        self._buf = bytearray(128)
        self._fill = 0
        self._len = 0
        if data:
            self.update(data)

    def update(self, data):
        view = memoryview(data)
        self._len += len(view)
        pos = 0
        while pos < len(view):
            n = min(128 - self._fill, len(view) - pos)
            if self._fill == 0 and n == 128:  # a whole block straight from the input
                _compress(self._h, view[pos : pos + 128], self._w)
            else:
                self._buf[self._fill : self._fill + n] = view[pos : pos + n]
                self._fill += n
                if self._fill == 128:
                    _compress(self._h, memoryview(self._buf), self._w)
                    self._fill = 0
            pos += n

    def digest(self):
        h, buf, fill = list(self._h), bytearray(self._buf), self._fill
        pad = b"\x80" + b"\x00" * ((111 - self._len) % 128) + (self._len * 8).to_bytes(16, "big")
        tail = bytes(buf[:fill]) + pad
        for i in range(0, len(tail), 128):
            _compress(h, memoryview(tail)[i : i + 128], self._w)
        return b"".join(x.to_bytes(8, "big") for x in h)
