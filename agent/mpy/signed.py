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
that passed every rule leaves a verdict. The root is not verified again for it either: the
key binds the verdict to the root files' bytes the verify step verified, and the record
keeps that root's version and expiry. The record is as trusted as the filesystem it lies
on, like the journal and the agent's own code.

Here, not in the trust store: agent/mpy/header.py imports this module inside the verify and
install steps' phases (agent/mpy/phase.py) only, so it leaves the heap with them, while the
trust store's class is on the heap at all times (each method there is heap for good).
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


def keep(trust, envelope, device, facts):
    """Keep the verdict on `envelope`, which `trust` (agent/mpy/trust.py) accepted for
    `device`, with the plain `facts` planned from its manifest. Nowhere to keep it without a
    rotated root's path, nor when the root files changed while the trust store read them; a
    failed write costs the install's check a verification."""
    if not trust.rotated_path or trust.verified is None:
        return
    from agent.mpy.store import write_atomic

    fingerprint, version, expires = trust.verified[:3]
    record = {"signed": key(envelope, fingerprint, device), "root": [version, expires],
              "facts": facts}  # fmt: skip
    try:
        write_atomic(path(trust.rotated_path), record)
    except (OSError, MemoryError) as e:
        print("signature verdict not kept: %r" % e)


def kept(trust, envelope, device, now):
    """The facts keep() kept with its verdict on `envelope` for `device` while the root files
    are the ones it verified, once that root is unexpired (Rejected otherwise); None when
    there are none (none kept, another header's or root's, or an unreadable record). The
    root is not verified here: at 96K the install's VM had no 640 bytes for it at boot, and
    verifying it in the check split the heap until the install found no 768 (CI, 0a16bdf)."""
    if not trust.rotated_path:
        return None
    from agent.mpy.store import read_json

    try:
        found = read_json(path(trust.rotated_path))
        version, expires = found["root"]
    except (OSError, ValueError, KeyError, TypeError):  # TypeError: not a dict, or no pair
        return None
    if not (isinstance(version, int) and isinstance(expires, int)):
        return None
    if found.get("signed") != key(envelope, trust.fingerprint(), device):
        return None
    from agent.mpy.phase import Phase

    with Phase("root-expiry"):  # the keyring leaves with it
        from agent.core import keyring

        keyring.check_root_expiry(keyring.Root(b"", version, expires, {}, {}), now)
    return found.get("facts")
