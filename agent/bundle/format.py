"""The bundle's byte layout: a fixed 12-byte header, the signature envelope, then payloads.

    offset 0   8 bytes   magic b"CUBNDL1\\n"
    offset 8   4 bytes   envelope length L, unsigned big-endian, 1 <= L <= MAX_ENVELOPE
    offset 12  L bytes   signature envelope (JSON, DSSE) whose payload is the manifest
    then                 format 2 only (magic b"CUBNDL2\n"): the chunk indexes of the payloads
                         that have one, in manifest order, each payload.index["size"] bytes
    then                 payloads, back to back, in manifest order, each payload.size bytes

Invariant: a reader learns the envelope's length from a bounded field before reading it, so it
never reads more than HEADER_SIZE + MAX_ENVELOPE bytes before the signature is checked, and
every payload byte comes after the manifest that describes it. Pure functions, no I/O.
"""

import struct

from agent.core.envelope import MAX_ENVELOPE
from agent.core.errors import MalformedBundle

MAGIC = b"CUBNDL1\n"
MAGIC2 = b"CUBNDL2\n"  # format 2: chunk indexes between the envelope and the payloads
HEADER_SIZE = 12
_HEADER = ">8sI"


def encode_header(envelope_bytes, magic=MAGIC):
    if not (1 <= len(envelope_bytes) <= MAX_ENVELOPE):
        raise MalformedBundle(
            "signature envelope of %d bytes is out of bounds" % len(envelope_bytes)
        )
    return struct.pack(_HEADER, magic, len(envelope_bytes))


def parse_header(data):
    """The first HEADER_SIZE bytes -> envelope length. MalformedBundle on anything else."""
    data = bytes(data)
    if len(data) != HEADER_SIZE:
        raise MalformedBundle("bundle header is %d bytes, expected %d" % (len(data), HEADER_SIZE))
    magic, length = struct.unpack(_HEADER, data)
    if magic not in (MAGIC, MAGIC2):
        if magic[:6] == MAGIC[:6]:
            raise MalformedBundle(
                "bundle format %r is not supported" % magic,
                hint="this agent reads CUBNDL1 and CUBNDL2",
            )
        raise MalformedBundle("not a charger-update bundle (bad magic)")
    if not (1 <= length <= MAX_ENVELOPE):
        # The endless-header attack: a huge length would make the reader buffer unverified data.
        raise MalformedBundle(
            "bundle header announces a %d-byte envelope, more than the %d allowed"
            % (length, MAX_ENVELOPE)
        )
    return length


def header_format(data):
    """The bundle format the (already parsed) header's magic announces: 1 or 2."""
    return 2 if bytes(data[:8]) == MAGIC2 else 1


def check_format(header, manifest):
    """The unsigned magic must agree with the signed manifest's format."""
    if header_format(header) != manifest.format:
        raise MalformedBundle(
            "bundle header says format %d, its signed manifest format %d"
            % (header_format(header), manifest.format)
        )


def index_bytes(manifest):
    """Bytes of the chunk-index section (format 2; 0 for format 1)."""
    return sum(p.index["size"] for p in manifest.payloads if p.index is not None)


def index_offsets(envelope_length, manifest):
    """(payload, offset of its chunk index in the bundle) for each payload that has one."""
    offset = HEADER_SIZE + envelope_length
    result = []
    for p in manifest.payloads:
        if p.index is not None:
            result.append((p, offset))
            offset += p.index["size"]
    return result


def payload_offsets(envelope_length, manifest):
    """(payload, offset of its first byte in the bundle) for each payload, in order."""
    offset = HEADER_SIZE + envelope_length + index_bytes(manifest)
    result = []
    for p in manifest.payloads:
        result.append((p, offset))
        offset += p.size
    return result


def bundle_size(envelope_length, manifest):
    """Total bytes of a well-formed bundle: the hard length bound for a download."""
    return HEADER_SIZE + envelope_length + index_bytes(manifest) + manifest.payload_bytes
