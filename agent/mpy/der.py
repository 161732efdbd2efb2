"""The few DER shapes a verifier meets: SubjectPublicKeyInfo of Ed25519 and P-256 keys and the
ECDSA-Sig-Value (r, s). Strict: definite short or long lengths, no trailing bytes.

Invariant: every function returns the parsed value or None; no input raises.
"""

ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1
_PRIME256V1 = bytes.fromhex("2a8648ce3d030107")  # 1.2.840.10045.3.1.7


def _tlv(data, pos):
    """(tag, value start, value end) of the element at `pos`, or None."""
    if pos + 2 > len(data):
        return None
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 2 or pos + n > len(data):
            return None
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or (n == 2 and length < 0x100):
            return None  # not the shortest form: DER forbids it
        pos += n
    if pos + length > len(data):
        return None
    return tag, pos, pos + length


def _children(data, start, end):
    out = []
    pos = start
    while pos < end:
        el = _tlv(data, pos)
        if el is None or el[2] > end:
            return None
        out.append(el)
        pos = el[2]
    return out


def ed25519_public(spki):
    """The raw 32-byte key of an Ed25519 SubjectPublicKeyInfo, or None."""
    spki = bytes(spki)
    if len(spki) == 44 and spki[:12] == ED25519_SPKI_PREFIX:
        return spki[12:]
    return None


def p256_public(spki):
    """(x, y) of an uncompressed P-256 SubjectPublicKeyInfo, or None."""
    spki = bytes(spki)
    top = _tlv(spki, 0)
    if top is None or top[0] != 0x30 or top[2] != len(spki):
        return None
    parts = _children(spki, top[1], top[2])
    if not parts or len(parts) != 2 or parts[0][0] != 0x30 or parts[1][0] != 0x03:
        return None
    algo = _children(spki, parts[0][1], parts[0][2])
    if not algo or len(algo) != 2 or algo[0][0] != 0x06 or algo[1][0] != 0x06:
        return None
    if spki[algo[0][1] : algo[0][2]] != _EC_PUBLIC_KEY:
        return None
    if spki[algo[1][1] : algo[1][2]] != _PRIME256V1:
        return None
    bits = spki[parts[1][1] : parts[1][2]]
    if len(bits) != 66 or bits[0] != 0 or bits[1] != 4:  # no unused bits, uncompressed point
        return None
    return int.from_bytes(bits[2:34], "big"), int.from_bytes(bits[34:66], "big")


def _integer(data, el):
    tag, start, end = el
    if tag != 0x02 or end == start:
        return None
    value = data[start:end]
    if value[0] & 0x80:
        return None  # negative
    if len(value) > 1 and value[0] == 0 and not value[1] & 0x80:
        return None  # a superfluous leading zero
    return int.from_bytes(value, "big")


def ecdsa_signature(sig):
    """(r, s) of a DER ECDSA-Sig-Value, or None."""
    sig = bytes(sig)
    top = _tlv(sig, 0)
    if top is None or top[0] != 0x30 or top[2] != len(sig):
        return None
    parts = _children(sig, top[1], top[2])
    if not parts or len(parts) != 2:
        return None
    r, s = _integer(sig, parts[0]), _integer(sig, parts[1])
    if r is None or s is None:
        return None
    return r, s
