"""The bundle's signed header on the board: fetch it (12 bytes + envelope, bounded), verify
it with the board's trust store, and plan the one `app` payload it promises.

verify() is the verify step's: it verifies the header in full and keeps its verdict with the
plain facts of the payload (agent/mpy/signed.py). check() is the first half of an install
(agent/mpy/installer.py is the second): it checks the header again (the bytes the download
step fetched, kept in RAM or on flash, agent/mpy/steps.py) on the facts kept with the verdict, or
verifies it in full when there are none, and adds the sha256 of the header bytes, which binds
the write to exactly the bytes checked here. Each runs in its own phase with no connection
open, so the verifiers never share the heap with the download or the inflater.

Invariant: nothing past the envelope is read; the facts are plain values (no manifest objects).
"""

import binascii
import hashlib

from agent.core.envelope import MAX_ENVELOPE
from agent.core.errors import MalformedBundle, NoSpace, Rejected

HEADER = 12
MAGIC = b"CUBNDL1\n"
MAGIC2 = b"CUBNDL2\n"  # agent/bundle/format.py: format 2 carries chunk indexes


class WindowTooLarge(Rejected):
    """The payload was compressed with a deflate window larger than this board can hold."""

    reason = "window-too-large"


def read_envelope(source):
    """The raw signature envelope at the start of the bundle (checked framing, not parsed)."""
    head = source.read_exact(HEADER, "header")
    if head[:8] == MAGIC2:
        raise MalformedBundle(
            "bundle format 2 (chunk-indexed, for delta installs) is not installable here",
            "sign this board's releases as format 1 (docs/micropython.md)",
        )
    if head[:8] != MAGIC:
        raise MalformedBundle("not a charger-update bundle (bad magic)")
    length = int.from_bytes(head[8:12], "big")
    if not 1 <= length <= MAX_ENVELOPE:
        raise MalformedBundle("bundle header announces a %d-byte envelope" % length)
    return source.read_exact(length, "signature envelope")


def fetch_header(url, timeout_s=10, poll=None, tls=None, max_time_s=0):
    """The raw signed envelope at the start of the bundle at `url` (nothing more is read);
    `tls`, `max_time_s`: see agent/mpy/http.py's Download."""
    from agent.mpy.http import Download

    source = Download(url, HEADER + MAX_ENVELOPE, timeout_s, on_wait=poll, tls=tls,
                      max_time_s=max_time_s)  # fmt: skip
    try:
        return read_envelope(source)
    finally:
        source.close()


def verify(trust, raw, device, floor, now, version=None, slot_class="app"):
    """The verify step: the facts of the raw envelope `raw` once every rule holds (Rejected
    subclasses otherwise), kept with its verdict for the install's check. `version`: the
    job's, which the signed one must equal (VersionMismatch); `slot_class`: the one payload's
    (MalformedBundle unless the bundle has exactly that one)."""
    from agent.core.envelope import MANIFEST_TYPE, parse_envelope

    envelope = parse_envelope(raw, MANIFEST_TYPE)
    manifest = trust.verify(envelope, device, floor, now)
    # Not from jobs.py: the journey's modules (jobs among them) are parked during the verify
    # and install steps (agent/mpy/park.py), and importing jobs here, past the signatures,
    # failed for 592 bytes at 96K-98K.
    from agent.core.policy import check_version

    check_version(version, manifest.version)
    facts = plan(manifest, slot_class)
    manifest = None  # its objects may go before the record is written: the heap is tight
    from agent.mpy import signed

    signed.keep(trust, envelope, device, facts)
    return facts


def _kept(trust, envelope, device, now):
    """The facts the verify step kept for `envelope` (plan()'s), if all of them are there:
    a record without them is not trusted (the header is verified in full again)."""
    from agent.mpy import signed

    facts = signed.kept(trust, envelope, device, now)
    try:
        for name in ("name", "sha256", "compression", "installed_sha256", "version"):
            if not isinstance(facts[name], str):
                return None
        for name in ("size", "window_bits", "installed_size", "security_version", "expires"):
            if not isinstance(facts[name], int):
                return None
    except (KeyError, TypeError):  # TypeError: no facts, or not a dict
        return None
    return facts


def app_payload(manifest, slot_class):
    found = [p for p in manifest.payloads if p.slot_class == slot_class]
    others = [p.name for p in manifest.payloads if p.slot_class != slot_class]
    if len(found) != 1 or others:
        raise MalformedBundle(
            "this board installs exactly one %r payload; the bundle has %s"
            % (slot_class, ", ".join("%s:%s" % (p.name, p.slot_class) for p in manifest.payloads))
        )
    return found[0]


def plan(manifest, slot_class):
    """The facts of the `slot_class` payload to install and of its release, as plain values (no
    manifest objects: they stay in their phase)."""
    p = app_payload(manifest, slot_class)
    return {
        "name": p.name, "size": p.size, "sha256": p.sha256, "compression": p.compression,
        "window_bits": p.window_bits if p.compression == "gzip" else 0,
        "installed_size": p.installed_size, "installed_sha256": p.installed_sha256,
        "version": manifest.version, "security_version": manifest.security_version,
        "expires": manifest.expires,
    }  # fmt: skip


def fit(facts, partition_size, max_window_bits):
    """Rejected when this board cannot install the payload of `facts`."""
    if facts["installed_size"] > partition_size:
        raise NoSpace("image of %d bytes does not fit partition of %d"
                      % (facts["installed_size"], partition_size))  # fmt: skip
    if facts["window_bits"] > max_window_bits:
        raise WindowTooLarge(
            "payload %s needs a %d KiB inflate window; this board holds %d KiB"
            % (facts["name"], (1 << facts["window_bits"]) // 1024,
               (1 << max_window_bits) // 1024),
            "sign it with `charger-update bundle create --window-bits %d`" % max_window_bits,
        )  # fmt: skip


def check(trust, raw, device, floor, now, partition_size, options, version=None):
    """The install's first half: check the raw envelope `raw` again (and that it is the job's
    `version`) and that its payload fits; the facts plus the header's size and sha256, which
    bind installer.write() to exactly these checked bytes. With the verify step's verdict
    kept, the rules that may have changed since are checked on its facts; without, the
    header is verified in full again."""
    from agent.core.envelope import MANIFEST_TYPE, parse_envelope

    slot_class = options.get("slot_class", "app")
    facts = _kept(trust, parse_envelope(raw, MANIFEST_TYPE), device, now)
    if facts is None:
        facts = verify(trust, raw, device, floor, now, version, slot_class)
    else:
        from agent.core import policy

        # What policy's rules read of a manifest, from the kept facts. A class made here,
        # not at the module's top: this module is on the heap in every step that fetches or
        # verifies a header, and a class costs a type and a dict there.
        class Release:
            version = facts["version"]
            security_version = facts["security_version"]
            expires = facts["expires"]

        policy.check_expiry(Release, now)
        policy.check_security_version(Release, floor)
        policy.check_version(version, facts["version"])
    fit(facts, partition_size, options.get("max_window_bits", 15))
    digest = hashlib.sha256(MAGIC + len(raw).to_bytes(4, "big"))  # what read_envelope() took
    digest.update(raw)
    facts["header_size"] = HEADER + len(raw)
    facts["header_sha256"] = binascii.hexlify(digest.digest()).decode()
    return facts
