"""Ed25519 signature verification (RFC 8032, section 5.1.7) in plain integers, for MicroPython.

Invariant: verify() returns True only for a canonical signature (S < L, point encodings with
y < p that decode onto the curve) whose [S]B - [k]A encodes to exactly the signature's R, as
OpenSSL and `cryptography` check it; any malformed input is False, never an exception.
No secret data is handled here, so nothing needs to run in constant time.
"""

from agent.mpy.sha512 import sha512

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
_BY = (4 * pow(5, P - 2, P)) % P


def _recover_x(y, sign):
    """x for y on the curve with the given sign bit, or None (RFC 8032 5.1.3)."""
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = (u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P)) % P
    vxx = (v * x * x) % P
    if vxx != u:
        if vxx != (-u) % P:
            return None
        x = (x * SQRT_M1) % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return x


def _decode(s):
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, (x * y) % P)


def _encode(pt):
    x, y, z, _ = pt
    zi = pow(z, P - 2, P)
    x, y = (x * zi) % P, (y * zi) % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _add(p, q):
    # Extended coordinates, "add-2008-hwcd-3" (a = -1).
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = ((y1 - x1) * (y2 - x2)) % P
    b = ((y1 + x1) * (y2 + x2)) % P
    c = (2 * D * t1 * t2) % P
    d = (2 * z1 * z2) % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return ((e * f) % P, (g * h) % P, (f * g) % P, (e * h) % P)


def _double(p):
    x1, y1, z1, _ = p
    a = (x1 * x1) % P
    b = (y1 * y1) % P
    c = (2 * z1 * z1) % P
    h = a + b
    e = (h - (x1 + y1) * (x1 + y1)) % P
    g = a - b
    f = c + g
    return ((e * f) % P, (g * h) % P, (f * g) % P, (e * h) % P)


_IDENTITY = (0, 1, 1, 0)
_B = (_recover_x(_BY, 0), _BY, 1, (_recover_x(_BY, 0) * _BY) % P)


def _double_mul(s, b, k, a):
    """[s]b + [k]a in one pass (Straus-Shamir): one doubling per bit, not two."""
    ab = _add(a, b)
    r = _IDENTITY
    for i in range(255, -1, -1):  # s, k < L < 2**253
        r = _double(r)
        bs, bk = (s >> i) & 1, (k >> i) & 1
        if bs and bk:
            r = _add(r, ab)
        elif bs:
            r = _add(r, b)
        elif bk:
            r = _add(r, a)
    return r


def _neg(pt):
    x, y, z, t = pt
    return ((-x) % P, y, z, (-t) % P)


def verify(public, signature, message):
    """True when `signature` (64 bytes) is a valid Ed25519 signature by `public` (32 bytes)."""
    try:
        public, signature = bytes(public), bytes(signature)
        if len(public) != 32 or len(signature) != 64:
            return False
        a = _decode(public)
        r_bytes = signature[:32]
        if a is None or _decode(r_bytes) is None:
            return False
        s = int.from_bytes(signature[32:], "little")
        if s >= L:
            return False
        digest = sha512(r_bytes)
        digest.update(public)
        digest.update(message)  # hashed in place: no copy of the message
        h = digest.digest()
        k = int.from_bytes(h, "little") % L
        return _encode(_double_mul(s, _B, k, _neg(a))) == r_bytes
    except (ValueError, TypeError):  # a MemoryError is no verdict: it propagates
        return False
