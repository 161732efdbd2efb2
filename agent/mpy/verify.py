"""The verify_fn the trust core (agent/core/keyring.py) takes, built on this package's own
Ed25519 and ECDSA P-256 verifiers: MicroPython has no signature module.

Invariant: a key verifies only signatures of its declared keytype; any malformed key or
signature answers False. Only the verifier of that keytype is imported (an Ed25519-only root
never loads the P-256 code, and the reverse).
"""

from agent.mpy import der


def verify_key(key, sig, data):
    """keyring's verify_fn(key, sig, data) -> bool; key is an agent.core.keyring.Key."""
    if key.keytype == "ed25519":
        from agent.mpy import ed25519

        raw = der.ed25519_public(key.public_der)
        return raw is not None and ed25519.verify(raw, sig, data)
    if key.keytype == "ecdsa-p256":
        from agent.mpy import p256

        point = der.p256_public(key.public_der)
        rs = der.ecdsa_signature(sig)
        if point is None or rs is None:
            return False
        return p256.verify(point[0], point[1], rs[0], rs[1], data)
    return False
