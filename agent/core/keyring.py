"""Root metadata (python-tuf's root is the model): who may sign what, k of n, and rotation.

Invariant: a Root is trusted only if it is the provisioned root that verifies under its own
root role, or it is version N+1 signed by a threshold of root N's root keys AND of its own.
Revocation is a key no longer listed. A key is listed only in its one canonical encoding, so
distinct key ids are distinct keys and k of n means k keys. Signatures are checked over the
envelope's PAE bytes with an injected verify_fn(key, sig, data) -> bool, so this module stays
pure (MicroPython too).
"""

import binascii
import hashlib
import json

from agent.core import timefmt
from agent.core.envelope import MANIFEST_TYPE, ROOT_TYPE
from agent.core.errors import BadSignature, Downgrade, Expired, MalformedBundle, UnknownKey

ROLES = ("root", "release")
KEYTYPES = ("ed25519", "ecdsa-p256")
MAX_KEYS = 64


# The one DER SubjectPublicKeyInfo a key of each type may be listed as: a fixed prefix (the
# algorithm and curve, and the bit string's header) and the key itself, for P-256 always the
# uncompressed point (04 || X || Y). One key, one encoding, so one key id: a root cannot list a
# key twice (say as a compressed and an uncompressed point) to meet a threshold with it alone.
CANONICAL_SPKI = {
    "ed25519": (binascii.unhexlify("302a300506032b6570032100"), 32),
    "ecdsa-p256": (
        binascii.unhexlify("3059301306072a8648ce3d020106082a8648ce3d03010703420004"),
        64,
    ),
}


def keyid_of(public_der):
    """The key id: sha256 hex of the DER SubjectPublicKeyInfo."""
    return binascii.hexlify(hashlib.sha256(public_der).digest()).decode("ascii")


def is_canonical(keytype, public_der):
    """True if public_der is the canonical SPKI encoding for a key of `keytype`."""
    prefix, size = CANONICAL_SPKI[keytype]
    return len(public_der) == len(prefix) + size and public_der[: len(prefix)] == prefix


class Key:
    def __init__(self, keyid, keytype, public_der):
        self.keyid = keyid
        self.keytype = keytype
        self.public_der = public_der


class Role:
    def __init__(self, name, keyids, threshold, keys):
        self.name = name
        self.keyids = keyids  # list of hex key ids
        self.threshold = threshold
        self.keys = keys  # keyid -> Key, only this role's keys


class Root:
    def __init__(self, raw, version, expires, keys, roles, created=0):
        self.raw = raw
        self.version = version
        self.expires = expires
        self.keys = keys
        self.roles = roles
        self.created = created  # epoch s; 0 when the root does not say (older roots)

    def role(self, name):
        return self.roles[name]


def _bad(field, what):
    return MalformedBundle("root field %s %s" % (field, what))


def _key(keyid, entry):
    where = "keys.%s" % keyid[:16]
    if not isinstance(entry, dict) or entry.get("keytype") not in KEYTYPES:
        raise _bad(where + ".keytype", "must be one of %s" % ", ".join(KEYTYPES))
    public = entry.get("public")
    try:
        der = binascii.a2b_base64(public.encode("ascii"))
    except (AttributeError, ValueError, UnicodeError):
        raise _bad(where + ".public", "must be base64 DER SubjectPublicKeyInfo")
    if not is_canonical(entry["keytype"], der):
        raise _bad(
            where + ".public",
            "is not the canonical DER SubjectPublicKeyInfo of an %s key (P-256: uncompressed "
            "point)" % entry["keytype"],
        )
    if keyid_of(der) != keyid:
        raise _bad(where, "key id is not the sha256 of its public key")
    return Key(keyid, entry["keytype"], der)


def _role(name, entry, keys):
    if not isinstance(entry, dict):
        raise _bad("roles." + name, "must be {keyids, threshold}")
    keyids = entry.get("keyids")
    if not isinstance(keyids, list) or not keyids or len(keyids) > MAX_KEYS:
        raise _bad("roles.%s.keyids" % name, "must be a non-empty list of key ids")
    for i, keyid in enumerate(keyids):
        if not isinstance(keyid, str) or keyid not in keys or keyid in keyids[:i]:
            raise _bad("roles.%s.keyids[%d]" % (name, i), "is not a distinct listed key id")
    threshold = entry.get("threshold")
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise _bad("roles.%s.threshold" % name, "must be an integer")
    if not (1 <= threshold <= len(keyids)):
        raise _bad("roles.%s.threshold" % name, "must be in 1..%d" % len(keyids))
    return Role(name, list(keyids), threshold, dict((k, keys[k]) for k in keyids))


def parse_root(raw):
    """Root JSON bytes -> Root (structure only; trust comes from load_trusted/update_root)."""
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, UnicodeError, RuntimeError, TypeError) as e:
        raise MalformedBundle("root is not UTF-8 JSON: %s" % e)
    if not isinstance(obj, dict) or obj.get("type") != "root":
        raise _bad("type", 'must be "root"')
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad("version", "must be an integer >= 1")
    try:
        expires = timefmt.parse(obj.get("expires"))
    except ValueError as e:
        raise _bad("expires", "is not a UTC timestamp (%s)" % e)
    created = 0
    if obj.get("created") is not None:  # optional: a floor of time for the device
        try:
            created = timefmt.parse(obj.get("created"))
        except ValueError as e:
            raise _bad("created", "is not a UTC timestamp (%s)" % e)
        if created >= expires:
            raise _bad("expires", "must be later than created")
    entries = obj.get("keys")
    if not isinstance(entries, dict) or not entries or len(entries) > MAX_KEYS:
        raise _bad("keys", "must map 1..%d key ids to keys" % MAX_KEYS)
    keys = dict((k, _key(str(k), v)) for k, v in entries.items())
    roles = obj.get("roles")
    if not isinstance(roles, dict):
        raise _bad("roles", "must be an object")
    roles = dict((n, _role(n, roles.get(n), keys)) for n in ROLES)
    return Root(bytes(raw), version, expires, keys, roles, created)


def verify_threshold(signed_bytes, signatures, role, verify_fn):
    """Return the key ids of `role` whose signature verifies; raise unless >= threshold.

    UnknownKey: no signature comes from a key the role lists (unknown or revoked signer).
    BadSignature: role keys signed, but fewer than the threshold verify.
    """
    good = []
    known = 0
    for keyid, sig in signatures:
        key = role.keys.get(keyid)
        if key is None:
            continue
        known += 1
        if keyid in good:
            continue  # one key counts once, however often it signs
        try:
            ok = verify_fn(key, sig, signed_bytes)
        except MemoryError:  # no verdict (a small board's heap): fail the step, not the bundle
            raise
        except Exception:  # a verifier that chokes on the input has not verified it
            ok = False
        if ok:
            good.append(keyid)
    if not known:
        raise UnknownKey(
            "signed by %s, none of them a %s key of the trusted root"
            % (", ".join(k[:16] for k, _ in signatures) or "no key", role.name),
            hint="sign with a listed %s key, or rotate the root to add this key" % role.name,
        )
    if len(good) < role.threshold:
        raise BadSignature(
            "%d of the %d required %s signatures verify" % (len(good), role.threshold, role.name),
            hint="the bundle was altered or signed with the wrong key",
        )
    return good


def _check_type(envelope, expected):
    if envelope.payload_type != expected:
        raise MalformedBundle(
            "envelope holds %r, expected %r" % (envelope.payload_type[:80], expected)
        )


def load_trusted(envelope, verify_fn):
    """The provisioned root: must verify under its own root role."""
    _check_type(envelope, ROOT_TYPE)
    root = parse_root(envelope.payload)
    verify_threshold(envelope.signed_bytes, envelope.signatures, root.role("root"), verify_fn)
    return root


def update_root(trusted, envelope, verify_fn):
    """Rotate from `trusted` (version N) to the root in `envelope`, which must be N+1."""
    _check_type(envelope, ROOT_TYPE)
    new = parse_root(envelope.payload)
    if new.version <= trusted.version:
        raise Downgrade(
            "root version %d is not newer than the trusted version %d"
            % (new.version, trusted.version),
            hint="this is an old root being replayed (rollback attack)",
        )
    if new.version != trusted.version + 1:
        raise _bad("version", "is %d; apply root %d first" % (new.version, trusted.version + 1))
    signed = envelope.signed_bytes
    verify_threshold(signed, envelope.signatures, trusted.role("root"), verify_fn)
    verify_threshold(signed, envelope.signatures, new.role("root"), verify_fn)
    return new


def check_root_expiry(root, now):
    if now >= root.expires:
        raise Expired(
            "trusted root version %d expired at %s" % (root.version, timefmt.format(root.expires)),
            hint="install a newer root (charger-update root ...) or check the device clock",
        )


def verify_release(root, envelope, verify_fn):
    """Threshold of the release role over a manifest envelope; returns the manifest bytes."""
    _check_type(envelope, MANIFEST_TYPE)
    verify_threshold(envelope.signed_bytes, envelope.signatures, root.role("release"), verify_fn)
    return envelope.payload
