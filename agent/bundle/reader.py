"""Read a bundle as a stream: header and envelope first, verified, then payloads in order.

Invariant: open_bundle() reads at most HEADER_SIZE + MAX_ENVELOPE bytes and, given a trust
store, returns only a manifest whose signatures met the release threshold; the stream is left
at the first payload byte. verify_file() additionally checks every payload's length and sha256
(and, for gzip, the decompressed length and sha256) and that nothing follows the last payload.
"""

import hashlib

from agent.bundle import chunked
from agent.bundle import format as fmt
from agent.core.envelope import MANIFEST_TYPE, parse_envelope
from agent.core.errors import MalformedBundle, PayloadMismatch, Truncated
from agent.core.manifest import parse_manifest
from agent.transfer.slots import installed_chunks

CHUNK = 1 << 20


def read_exact(read_fn, n, what):
    """Exactly n bytes from read_fn, or Truncated saying how far the data went."""
    parts = []
    got = 0
    while got < n:
        block = read_fn(min(n - got, CHUNK))
        if not block:
            raise Truncated(
                "bundle ends inside the %s: %d of %d bytes" % (what, got, n),
                hint="the file is incomplete; download it again",
            )
        if len(block) > n - got:
            raise MalformedBundle("source returned more bytes than asked for")
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def open_bundle(read_fn, trust=None, now=None, device=None, installed_security_version=None):
    """Read header + envelope through read_fn(n) -> bytes; return (manifest, envelope).

    With `trust` (agent.trust.store.Trust) the manifest is returned only if the release role's
    threshold of signatures verified and it has not expired; `device` ({"model",
    "hardware_revision"}) and `installed_security_version` add those checks (see
    Trust.verify). Without `trust` the manifest is UNVERIFIED: for inspection only.
    The stream is left at the first byte of the first payload.
    """
    header = read_exact(read_fn, fmt.HEADER_SIZE, "header")
    length = fmt.parse_header(header)
    envelope = parse_envelope(read_exact(read_fn, length, "signature envelope"), MANIFEST_TYPE)
    if trust is not None:
        manifest = trust.verify(envelope, device, installed_security_version, now=now)
    else:
        manifest = parse_manifest(envelope.payload)
    fmt.check_format(header, manifest)
    return manifest, envelope


def read_indexes(read_fn, manifest):
    """Format 2: read the chunk-index section (the stream is right after the envelope) ->
    {payload name: ChunkIndex}, each checked against its signed size and sha256."""
    indexes = {}
    for payload in manifest.payloads:
        if payload.index is not None:
            stored = read_exact(read_fn, payload.index["size"], "chunk index")
            indexes[payload.name] = chunked.read_index(stored, payload)
    return indexes


def check_payload(read_fn, payload, chunk_size=CHUNK):
    """Consume exactly payload.size bytes and check them against the manifest: the stored
    sha256 and, for gzip, the installed size and sha256 (the same stream checks as a slot
    write, agent/transfer/slots.py, without writing anything)."""
    digest = hashlib.sha256()
    size = 0
    for data in installed_chunks(read_fn, payload, chunk_size, threaded=False):
        size += len(data)
        if payload.compression != "none":
            digest.update(data)
    if payload.compression != "none" and (
        size != payload.installed_size or digest.hexdigest() != payload.installed_sha256
    ):
        raise PayloadMismatch(
            "payload %s does not inflate to its signed installed size/sha256" % payload.name
        )


def verify_file(path, trust, device=None, installed_security_version=None, now=None):
    """Fully verify a bundle file: signature, expiry, optional device policy, every byte.

    device None skips model/hardware; installed_security_version None skips anti-rollback.
    """
    with open(path, "rb") as f:
        manifest, _ = open_bundle(f.read, trust, now, device, installed_security_version)
        indexes = read_indexes(f.read, manifest)
        for payload in manifest.payloads:
            if payload.name in indexes:
                units = chunked.stream_blocks(
                    lambda n: read_exact(f.read, n, "payload"), payload, indexes[payload.name]
                )
                for _ in units:
                    pass
            else:
                check_payload(f.read, payload)
        if f.read(1):
            raise MalformedBundle("bundle has data after its last payload")
    return manifest
