"""The verify step's verdict on a release's header, kept on flash beside the rotated root's
file (the board's trust state: `signed.json` in its directory), for the install step's check.

The verify step verifies the header in full; the install step checks the same header again
(agent/mpy/header.py), often in a new VM after a reset for a split heap, when its heap is
fuller than the verify step's was. A verdict kept here spares that check the signatures'
arithmetic and the manifest's parser: it holds the plain facts the verify step planned from
the verified manifest (header.plan()), under a key that is the SHA-256 of what the verdict
depends on: the envelope's type, signed bytes and signatures, the root files' fingerprint
and the device's model and hardware revision (the compatibility rule's inputs). The rules
that can change between the steps (root and bundle expiry, the anti-rollback floor, the
job's version, the slot's size) are checked again each time, on those facts; only a header
that passed every rule leaves a verdict. The record is as trusted as the filesystem it lies
on, like the journal and the agent's own code.

Imported inside the signatures phase only (agent/mpy/phase.py), it leaves the heap with it.
"""

NAME = "signed.json"


def path(rotated_path):
    head, sep, _ = rotated_path.rpartition("/")
    return head + sep + NAME


def key(envelope, fingerprint, device):
    """What a verdict on `envelope` depends on, as hex."""
    import binascii
    import hashlib

    digest = hashlib.sha256(fingerprint)
    parts = [envelope.payload_type.encode(), envelope.payload]
    parts += [keyid.encode() + b":" + sig for keyid, sig in envelope.signatures]
    parts += [str(device.get("model")).encode(), str(device.get("hardware_revision")).encode()]
    for part in parts:  # length-prefixed: no two envelopes hash alike by moving a boundary
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return binascii.hexlify(digest.digest()).decode()


def record(rotated_path, envelope, fingerprint, device, facts):
    """(path, record) of the verdict on `envelope` with its `facts`, for store.write_atomic."""
    return path(rotated_path), {"signed": key(envelope, fingerprint, device), "facts": facts}


def kept(rotated_path, envelope, fingerprint, device):
    """The facts kept with the verdict on `envelope`, or None (none kept, another header's,
    or an unreadable record)."""
    from agent.mpy.store import read_json

    try:
        found = read_json(path(rotated_path))
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or found.get("signed") != key(envelope, fingerprint, device):
        return None
    return found.get("facts")
