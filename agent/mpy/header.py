"""The bundle's signed header on the board: fetch it (12 bytes + envelope, bounded), verify
it with the board's trust store, and plan the one `app` payload it promises.

check() is the first half of an install (agent/mpy/installer.py is the second): it verifies
the header again (the bytes the verify step fetched, kept in RAM, or fetched anew after a
reboot; the verdict the verify step kept spares it the signatures' arithmetic,
agent/mpy/signed.py) and keeps only plain facts about the payload and the sha256 of the header
bytes, which bind the write to exactly the bytes verified here. It runs in its own phase with no
connection open, so the verifiers never share the heap with the download or the inflater.

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


def verify(trust, raw, device, floor, now, version=None, again=False):
    """The verified manifest of the raw envelope `raw` (Rejected subclasses otherwise).
    `version`: the job's, which the signed one must equal (VersionMismatch); `again`: see
    agent/mpy/trust.py (the verdict on the signatures kept by the verify step)."""
    from agent.core.envelope import MANIFEST_TYPE, parse_envelope

    manifest = trust.verify(parse_envelope(raw, MANIFEST_TYPE), device, floor, now, again)
    # Not from jobs.py: the journey's modules (jobs among them) are parked during the verify
    # and install steps (agent/mpy/park.py), and importing jobs here, past the signatures,
    # failed for 592 bytes at 96K-98K. The manifest's module is loaded by now.
    from agent.core.manifest import check_version

    check_version(version, manifest.version)
    return manifest


def app_payload(manifest, slot_class):
    found = [p for p in manifest.payloads if p.slot_class == slot_class]
    others = [p.name for p in manifest.payloads if p.slot_class != slot_class]
    if len(found) != 1 or others:
        raise MalformedBundle(
            "this board installs exactly one %r payload; the bundle has %s"
            % (slot_class, ", ".join("%s:%s" % (p.name, p.slot_class) for p in manifest.payloads))
        )
    return found[0]


def plan(manifest, slot_class, partition_size, max_window_bits):
    """Plain facts about the payload to install (no manifest objects: they stay in their
    phase), or Rejected when this board cannot install it."""
    p = app_payload(manifest, slot_class)
    if p.installed_size > partition_size:
        raise NoSpace("image of %d bytes does not fit partition of %d"
                      % (p.installed_size, partition_size))  # fmt: skip
    window = p.window_bits if p.compression == "gzip" else 0
    if window > max_window_bits:
        raise WindowTooLarge(
            "payload %s needs a %d KiB inflate window; this board holds %d KiB"
            % (p.name, (1 << window) // 1024, (1 << max_window_bits) // 1024),
            "sign it with `charger-update bundle create --window-bits %d`" % max_window_bits,
        )
    return {
        "name": p.name, "size": p.size, "sha256": p.sha256, "compression": p.compression,
        "window_bits": window, "installed_size": p.installed_size,
        "installed_sha256": p.installed_sha256, "version": manifest.version,
        "security_version": manifest.security_version,
    }  # fmt: skip


def check(trust, raw, device, floor, now, partition_size, options, version=None):
    """The install's first half: verify the raw envelope `raw` again (and that it is the
    job's `version`) and plan its payload; plan()'s facts plus the header's size and sha256,
    which bind installer.write() to exactly these verified bytes."""
    manifest = verify(trust, raw, device, floor, now, version, again=True)
    facts = plan(manifest, options.get("slot_class", "app"), partition_size,
                 options.get("max_window_bits", 15))  # fmt: skip
    digest = hashlib.sha256(MAGIC + len(raw).to_bytes(4, "big"))  # what read_envelope() took
    digest.update(raw)
    facts["header_size"] = HEADER + len(raw)
    facts["header_sha256"] = binascii.hexlify(digest.digest()).decode()
    return facts
