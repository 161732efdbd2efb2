"""ECDSA over NIST P-256 with SHA-256 (FIPS 186-4), verification only, in plain integers.

Invariant: verify() returns True only when r and s are in [1, n-1], the public point is on the
curve, and the x of u1*G + u2*Q reduces to r mod n; anything malformed is False, never an
exception. Public inputs only, so nothing needs to run in constant time.
"""

import hashlib

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5


def on_curve(x, y):
    return 0 <= x < P and 0 <= y < P and (y * y - ((x * x % P) * x - 3 * x + B)) % P == 0


# Jacobian coordinates (X, Y, Z) with x = X/Z^2, y = Y/Z^3; Z == 0 is the point at infinity.
# Every product of two field elements is reduced before it meets a third: a 768-bit temporary
# (98 bytes) found no run that long in the verify step's split heap at 96K; 512 bits take 66.
_INF = (1, 1, 0)


def _double(p):
    x, y, z = p
    if z == 0 or y == 0:
        return _INF
    yy = (y * y) % P
    s = (x * yy % P) * 4 % P
    zz = (z * z) % P
    m = ((x - zz) * (x + zz) % P) * 3 % P  # a = -3
    x3 = (m * m - 2 * s) % P
    y3 = (m * (s - x3) - (yy * yy % P) * 8) % P
    z3 = (2 * y * z) % P
    return (x3, y3, z3)


def _add(p, q):
    if p[2] == 0:
        return q
    if q[2] == 0:
        return p
    x1, y1, z1 = p
    x2, y2, z2 = q
    z1z1, z2z2 = (z1 * z1) % P, (z2 * z2) % P
    u1, u2 = (x1 * z2z2) % P, (x2 * z1z1) % P
    s1, s2 = (y1 * z2 % P) * z2z2 % P, (y2 * z1 % P) * z1z1 % P
    if u1 == u2:
        return _double(p) if s1 == s2 else _INF
    h, r = (u2 - u1) % P, (s2 - s1) % P
    hh = (h * h) % P
    hhh = (h * hh) % P
    v = (u1 * hh) % P
    x3 = (r * r - hhh - 2 * v) % P
    y3 = (r * (v - x3) - s1 * hhh) % P
    return (x3, y3, (z1 * z2 % P) * h % P)


def _double_mul(u1, g, u2, q):
    """u1*g + u2*q in one pass (Straus-Shamir)."""
    gq = _add(g, q)
    r = _INF
    for i in range(255, -1, -1):
        r = _double(r)
        b1, b2 = (u1 >> i) & 1, (u2 >> i) & 1
        if b1 and b2:
            r = _add(r, gq)
        elif b1:
            r = _add(r, g)
        elif b2:
            r = _add(r, q)
    return r


def verify_digest(qx, qy, r, s, digest):
    """ECDSA verification of (r, s) over a SHA-256 `digest` for public point (qx, qy)."""
    if not (1 <= r < N and 1 <= s < N) or not on_curve(qx, qy):
        return False
    e = int.from_bytes(digest, "big")
    w = pow(s, N - 2, N)
    pt = _double_mul((e * w) % N, (GX, GY, 1), (r * w) % N, (qx, qy, 1))
    if pt[2] == 0:
        return False
    x = (pt[0] * pow((pt[2] * pt[2]) % P, P - 2, P)) % P
    return x % N == r


def verify(qx, qy, r, s, message):
    try:
        return verify_digest(qx, qy, r, s, hashlib.sha256(message).digest())
    except (ValueError, TypeError):  # a MemoryError is no verdict: it propagates
        return False
