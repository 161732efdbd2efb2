"""The signature envelope (DSSE): signed bytes travel base64-encoded next to their signatures.

Invariant: signatures cover PAE(payloadType, payload) over the payload's exact bytes, never a
re-serialisation, and binding the type means a signed root can never pass as a manifest.
Parsing is bounded (MAX_ENVELOPE, MAX_SIGNATURES) and raises only MalformedBundle. Pure.
"""

import binascii
import json

from agent.core.errors import MalformedBundle

MANIFEST_TYPE = "application/vnd.charger-update.manifest+json"
ROOT_TYPE = "application/vnd.charger-update.root+json"
MAX_ENVELOPE = 128 * 1024  # a 64 KiB manifest is ~88 KiB in base64, plus signatures
MAX_SIGNATURES = 16
MAX_SIG_BYTES = 512
_HEX = "0123456789abcdef"


def pae(payload_type, payload):
    """DSSE v1 pre-authentication encoding: the exact bytes each signature covers."""
    t = payload_type.encode("utf-8")
    return (
        b"DSSEv1 "
        + str(len(t)).encode()
        + b" "
        + t
        + b" "
        + str(len(payload)).encode()
        + b" "
        + payload
    )


def b64encode(data):
    return binascii.b2a_base64(data).strip().decode("ascii")


def b64decode(text, field):
    if not isinstance(text, str):
        raise MalformedBundle("envelope field %s must be a base64 string" % field)
    try:
        return binascii.a2b_base64(text.encode("ascii"))
    except (ValueError, UnicodeError) as e:  # binascii.Error is a ValueError
        raise MalformedBundle("envelope field %s is not base64: %s" % (field, e))


class Envelope:
    def __init__(self, payload_type, payload, signatures, raw=None):
        self.payload_type = payload_type
        self.payload = payload  # the exact signed bytes
        self.signatures = signatures  # list of (keyid hex str, signature bytes)
        self.raw = raw

    @property
    def signed_bytes(self):
        return pae(self.payload_type, self.payload)

    @property
    def keyids(self):
        return [keyid for keyid, _ in self.signatures]

    def with_signature(self, keyid, sig):
        sigs = [s for s in self.signatures if s[0] != keyid] + [(keyid, sig)]
        return Envelope(self.payload_type, self.payload, sigs)

    def encode(self):
        sigs = [{"keyid": k, "sig": b64encode(s)} for k, s in self.signatures]
        obj = {
            "payloadType": self.payload_type,
            "payload": b64encode(self.payload),
            "signatures": sigs,
        }
        return json.dumps(obj).encode("utf-8")


def _signature(entry, i):
    if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str):
        raise MalformedBundle("envelope field signatures[%d] must be {keyid, sig}" % i)
    keyid = entry["keyid"]
    if not (1 <= len(keyid) <= 128):
        raise MalformedBundle("envelope field signatures[%d].keyid has a bad length" % i)
    # Key ids are sha256 hex; anything else (terminal escapes included) never gets printed.
    for c in keyid:
        if c not in _HEX:
            raise MalformedBundle("envelope field signatures[%d].keyid is not lowercase hex" % i)
    sig = b64decode(entry.get("sig"), "signatures[%d].sig" % i)
    if not (1 <= len(sig) <= MAX_SIG_BYTES):
        raise MalformedBundle("envelope field signatures[%d].sig has a bad length" % i)
    return (keyid, sig)


def parse_envelope(raw, expected_type=None):
    """Envelope bytes -> Envelope; MalformedBundle on anything unexpected."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_ENVELOPE:
        raise MalformedBundle(
            "signature envelope is missing or larger than %d bytes" % MAX_ENVELOPE
        )
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, UnicodeError, RuntimeError) as e:
        raise MalformedBundle("signature envelope is not UTF-8 JSON: %s" % e)
    if not isinstance(obj, dict):
        raise MalformedBundle("signature envelope must be a JSON object")
    payload_type = obj.get("payloadType")
    if not isinstance(payload_type, str):
        raise MalformedBundle("envelope field payloadType must be a string")
    if expected_type is not None and payload_type != expected_type:
        raise MalformedBundle(
            "envelope field payloadType is %r, expected %r" % (payload_type[:80], expected_type)
        )
    payload = b64decode(obj.get("payload"), "payload")
    sigs = obj.get("signatures")
    if not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES:
        raise MalformedBundle(
            "envelope field signatures must be a list of at most %d" % MAX_SIGNATURES
        )
    return Envelope(
        payload_type, payload, [_signature(s, i) for i, s in enumerate(sigs)], bytes(raw)
    )
