"""The verdict on a release's signatures, kept on flash beside the rotated root's file (the
board's trust state: `signed.json` in its directory), written by agent/mpy/trust.py.

The verify step verifies the header's signatures; the install step checks the same header again
(agent/mpy/header.py), often in a new VM after a reset for a split heap, when its heap is
fuller than the verify step's was. A verdict kept here lets that check skip the arithmetic. It
is the SHA-256 of what the verdict depends on: the envelope's type, signed bytes and signatures,
and the root files' fingerprint. Every other rule is checked again each time, and only a header
that passed them all leaves a verdict. The record is as trusted as the filesystem it lies on,
like the journal and the agent's own code.

Imported inside the signatures phase only (agent/mpy/phase.py), it leaves the heap with it.
"""

NAME = "signed.json"


def path(rotated_path):
    head, sep, _ = rotated_path.rpartition("/")
    return head + sep + NAME


def key(envelope, fingerprint):
    """What a verdict on `envelope`'s signatures depends on, as hex."""
    import binascii
    import hashlib

    digest = hashlib.sha256(fingerprint)
    parts = [envelope.payload_type.encode(), envelope.payload]
    parts += [keyid.encode() + b":" + sig for keyid, sig in envelope.signatures]
    for part in parts:  # length-prefixed: no two envelopes hash alike by moving a boundary
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return binascii.hexlify(digest.digest()).decode()


def record(rotated_path, envelope, fingerprint):
    """(path, record) of the verdict on `envelope`, for store.write_atomic."""
    return path(rotated_path), {"signed": key(envelope, fingerprint)}


def kept(rotated_path, envelope, fingerprint):
    """Whether the verdict kept is the one on `envelope` (an unreadable record is none)."""
    from agent.mpy.store import read_json

    try:
        found = read_json(path(rotated_path))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and found.get("signed") == key(envelope, fingerprint)
