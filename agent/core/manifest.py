"""Parse and validate manifest bytes into a Manifest; nothing unvalidated gets out.

Invariant: a Manifest exists only if every field was present, of the right type and in range;
anything else raises MalformedBundle naming the field at fault. `Manifest.raw` keeps the exact
bytes that were signed: they are never re-serialised (MicroPython's json loses key order, and
a verifier must check the bytes a signer saw). Pure: no I/O, runs on MicroPython.
"""

import json

from agent.core import components, semver, timefmt
from agent.core.errors import MalformedBundle

FORMAT = 1
FORMAT_CHUNKED = 2  # payloads may carry a signed chunk index (agent/core/chunkindex.py)
FORMATS = (FORMAT, FORMAT_CHUNKED)
MAX_MANIFEST = 64 * 1024  # bytes; a manifest is a few hundred bytes, this bounds the parser
MAX_PAYLOADS = 32
MAX_PAYLOAD_SIZE = 1 << 40  # 1 TiB: larger than any slot, small enough to be a sane bound
COMPRESSIONS = ("none", "gzip", "zstd-chunks")
CHUNKED = "zstd-chunks"  # format 2: the stored payload is one unit per indexed block
MAX_INDEX = 64 << 20  # bytes of a stored chunk index; a 1 GiB image needs about 2 MiB
_HEX = "0123456789abcdef"

TOP_FIELDS = ("format", "version", "security_version", "created", "expires", "compatible")
TOP_FIELDS = TOP_FIELDS + ("payloads", "components")
PAYLOAD_FIELDS = ("name", "slot_class", "size", "sha256", "compression")
PAYLOAD_FIELDS = PAYLOAD_FIELDS + ("installed_size", "installed_sha256")
PAYLOAD_FIELDS = PAYLOAD_FIELDS + ("type", "component", "mcu")  # agent/core/components.py
PAYLOAD_FIELDS = PAYLOAD_FIELDS + ("window_bits",)  # gzip only: the deflate window, 2**bits
WINDOW_BITS = 15  # a gzip payload that names no window may use zlib's largest (32 KiB)
CHUNK_FIELDS = ("index",)  # format 2 only


def _bad(field, what):
    return MalformedBundle("manifest field %s %s" % (field, what))


class Payload:
    window_bits = WINDOW_BITS  # gzip: the inflater needs a 2**window_bits byte window
    index = None  # format 2: {"size": bytes, "sha256": hex} of the stored chunk index

    def __init__(self, name, slot_class, size, sha256, compression, installed_size, installed_sha):
        self.name = name
        self.slot_class = slot_class
        self.size = size  # bytes stored in the bundle
        self.sha256 = sha256  # hex of the stored bytes
        self.compression = compression
        self.installed_size = installed_size  # bytes after decompression (== size if none)
        self.installed_sha256 = installed_sha
        self.type, self.component, self.mcu = components.SLOT, slot_class, None

    def to_dict(self):
        extra = {}
        if self.type != components.SLOT:
            extra = {"type": self.type, "mcu": dict(self.mcu)}
        if self.component != self.slot_class:
            extra["component"] = self.component
        if self.window_bits != WINDOW_BITS:
            extra["window_bits"] = self.window_bits
        return _with_index(
            self,
            dict(
                extra,
                **{
                    "name": self.name,
                    "slot_class": self.slot_class,
                    "size": self.size,
                    "sha256": self.sha256,
                    "compression": self.compression,
                    "installed_size": self.installed_size,
                    "installed_sha256": self.installed_sha256,
                },
            ),
        )


class Manifest:
    def __init__(self, raw, fields, payloads):
        self.raw = raw
        self.format = fields["format"]
        self.version = fields["version"]
        self.security_version = fields["security_version"]
        self.created = fields["created"]
        self.expires = fields["expires"]
        self.compatible = fields["compatible"]
        self.payloads = payloads
        self.components = components.release_components(
            fields.get("components"), payloads, self.version
        )

    @property
    def payload_bytes(self):
        """Total bytes of payload data that follow the envelope in a bundle."""
        return sum(p.size for p in self.payloads)

    def payload(self, name):
        for p in self.payloads:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_dict(self):
        return {
            "format": self.format,
            "version": self.version,
            "security_version": self.security_version,
            "created": timefmt.format(self.created),
            "expires": timefmt.format(self.expires),
            "compatible": [
                {"model": c["model"], "hardware_revisions": list(c["hardware_revisions"])}
                for c in self.compatible
            ],
            "payloads": [p.to_dict() for p in self.payloads],
            "components": dict(self.components),
        }


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _int(obj, field, lo, hi, where):
    value = obj.get(field)
    if not _is_int(value) or not (lo <= value <= hi):
        raise _bad(where + field, "must be an integer in %d..%d" % (lo, hi))
    return value


def _name(obj, field, where, max_len=64):
    value = obj.get(field)
    if not isinstance(value, str) or not (1 <= len(value) <= max_len):
        raise _bad(where + field, "must be a string of 1..%d characters" % max_len)
    for c in value:
        if not (c.isalpha() or c.isdigit() or c in "-_.+") or ord(c) > 127:
            raise _bad(where + field, "may hold only ASCII letters, digits and - _ . +")
    return value


def _sha(obj, field, where):
    value = obj.get(field)
    if not isinstance(value, str) or len(value) != 64 or not all(c in _HEX for c in value):
        raise _bad(where + field, "must be 64 lowercase hex digits")
    return value


def _time(obj, field):
    try:
        return timefmt.parse(obj.get(field))
    except ValueError as e:
        raise _bad(field, "is not a UTC timestamp YYYY-MM-DDTHH:MM:SSZ (%s)" % e)


def _only(obj, allowed, where):
    # Unknown fields are refused: a signer may have meant something this agent ignores.
    for key in obj:
        if key not in allowed:
            raise _bad(where + str(key)[:40], "is not a known field")


def _compatible(value):
    if not isinstance(value, list) or not (1 <= len(value) <= 64):
        raise _bad("compatible", "must be a list of 1..64 {model, hardware_revisions}")
    result = []
    for i, entry in enumerate(value):
        where = "compatible[%d]." % i
        if not isinstance(entry, dict):
            raise _bad("compatible[%d]" % i, "must be an object")
        _only(entry, ("model", "hardware_revisions"), where)
        model = _name(entry, "model", where)
        revs = entry.get("hardware_revisions")
        if not isinstance(revs, list) or not (1 <= len(revs) <= 64):
            raise _bad(where + "hardware_revisions", "must be a list of 1..64 strings")
        checked = [
            _name({"r": r}, "r", where + "hardware_revisions[%d]" % j) for j, r in enumerate(revs)
        ]
        result.append({"model": model, "hardware_revisions": checked})
    return result


def _payload(entry, i):
    where = "payloads[%d]." % i
    if not isinstance(entry, dict):
        raise _bad("payloads[%d]" % i, "must be an object")
    _only(entry, PAYLOAD_FIELDS + CHUNK_FIELDS, where)
    name = _name(entry, "name", where)
    kind, component, mcu = components.payload_fields(entry, where)
    slot_class = _name(entry, "slot_class", where) if kind == components.SLOT else None
    size = _int(entry, "size", 0, MAX_PAYLOAD_SIZE, where)
    sha = _sha(entry, "sha256", where)
    compression = entry.get("compression", "none")
    if compression not in COMPRESSIONS:
        raise _bad(where + "compression", "must be one of %s" % ", ".join(COMPRESSIONS))
    if compression == "none":
        # Uncompressed: the installed bytes are the stored bytes; say so or say nothing.
        isize = entry.get("installed_size", size)
        isha = entry.get("installed_sha256", sha)
        if isize != size or isha != sha:
            raise _bad(where + "installed_sha256", "must equal size/sha256 when uncompressed")
    else:
        isize = _int(entry, "installed_size", 0, MAX_PAYLOAD_SIZE, where)
        isha = _sha(entry, "installed_sha256", where)
    payload = Payload(name, slot_class, size, sha, compression, isize, isha)
    payload.type, payload.component, payload.mcu = kind, component, mcu
    payload.index = _chunk_index(entry, where, compression)
    if "window_bits" in entry:
        if compression != "gzip":
            raise _bad(where + "window_bits", "belongs only to gzip payloads")
        payload.window_bits = _int(entry, "window_bits", 9, 15, where)
    return payload


def _payloads(value):
    if not isinstance(value, list) or not (1 <= len(value) <= MAX_PAYLOADS):
        raise _bad("payloads", "must be a list of 1..%d payloads" % MAX_PAYLOADS)
    payloads = [_payload(entry, i) for i, entry in enumerate(value)]
    names = [p.name for p in payloads]
    # What each payload writes: a slot class, or an MCU (whose payloads have no slot class).
    targets = [p.slot_class if p.mcu is None else ("mcu", p.mcu["id"]) for p in payloads]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _bad("payloads[%d].name" % i, "repeats %r" % name)
        # Two payloads for one target would write it twice: the second would silently
        # replace the first, and the read-back would only check the second.
        if targets[i] in targets[:i]:
            if payloads[i].mcu is None:
                raise _bad("payloads[%d].slot_class" % i, "repeats %r" % targets[i])
            raise _bad("payloads[%d].mcu.id" % i, "repeats %r" % targets[i][1])
    return payloads


def _decode(raw):
    if not isinstance(raw, (bytes, bytearray)):
        raise MalformedBundle("manifest must be bytes")
    if len(raw) > MAX_MANIFEST:
        raise MalformedBundle(
            "manifest is %d bytes, more than the %d allowed" % (len(raw), MAX_MANIFEST)
        )
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, UnicodeError, RuntimeError) as e:  # RuntimeError: nesting depth
        raise MalformedBundle("manifest is not UTF-8 JSON: %s" % e)
    if not isinstance(obj, dict):
        raise MalformedBundle("manifest must be a JSON object")
    return obj


def parse_manifest(raw):
    """Validate manifest bytes; returns a Manifest or raises MalformedBundle."""
    obj = _decode(raw)
    _only(obj, TOP_FIELDS, "")
    fmt = obj.get("format")
    if fmt not in FORMATS or not _is_int(fmt):
        raise _bad("format", "must be 1 or 2 (the bundle formats this agent reads)")
    version = obj.get("version")
    if not semver.is_valid(version):
        raise _bad("version", "must be a semantic version like 1.2.3 or 1.2.3-rc.1")
    fields = {
        "format": fmt,
        "version": version,
        "security_version": _int(obj, "security_version", 0, (1 << 53) - 1, ""),
        "created": _time(obj, "created"),
        "expires": _time(obj, "expires"),
        "compatible": _compatible(obj.get("compatible")),
        "components": obj.get("components"),
    }
    if fields["expires"] <= fields["created"]:
        raise _bad("expires", "must be later than created")
    payloads = _payloads(obj.get("payloads"))
    _check_chunked(fmt, payloads)
    return Manifest(bytes(raw), fields, payloads)


# -- format 2: chunk indexes ------------------------------------------------------------------


def _chunk_index(entry, where, compression):
    """The payload's `index` field: present exactly when its compression is zstd-chunks."""
    value = entry.get("index")
    if value is None:
        if compression == CHUNKED:
            raise _bad(where + "index", "is required for compression %s" % CHUNKED)
        return None
    if compression != CHUNKED:
        raise _bad(where + "index", "belongs only to compression %s" % CHUNKED)
    if not isinstance(value, dict):
        raise _bad(where + "index", "must be an object {size, sha256}")
    _only(value, ("size", "sha256"), where + "index.")
    return {
        "size": _int(value, "size", 1, MAX_INDEX, where + "index."),
        "sha256": _sha(value, "sha256", where + "index."),
    }


def _check_chunked(fmt, payloads):
    for i, p in enumerate(payloads):
        if p.index is not None and fmt != FORMAT_CHUNKED:
            raise _bad("payloads[%d].index" % i, "needs bundle format 2")


def _with_index(payload, d):
    if payload.index is not None:
        d["index"] = {"size": payload.index["size"], "sha256": payload.index["sha256"]}
    return d
