"""One fuzz target per parser that reads bytes from outside (issue 11, "Done when").

A target takes any bytes and must end in a value or in its parser's documented error (the
`allowed` errors); anything else (a crash, a foreign exception, a broken round trip) is a
finding. Seed inputs and any crashing inputs found live in tests/fuzz/corpus/<target>/.
"""

import binascii
import hashlib
import io
import json
import os
import struct

from agent.bundle import chunked
from agent.bundle import format as fmt
from agent.bundle.reader import check_payload, open_bundle, read_exact, read_indexes
from agent.core import chunkindex as ci
from agent.core import keyring
from agent.core.envelope import parse_envelope
from agent.core.errors import (
    BootEnvError,
    MalformedBundle,
    MalformedJob,
    PayloadMismatch,
    Truncated,
    WrongModel,
)
from agent.core.jobs import job_from_dict, parse_job
from agent.core.manifest import parse_manifest
from bootloader_iface import grubenv, uboot_env
from bootloader_iface.booted import slot_from_cmdline
from tests.fuzz import frontends

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
DEVICE = {"model": "ACME-AC22"}
JOB_CHECKS = ["alarms", "charging-session", "communication", "acme.checks:Contactor"]


class Target:
    """fn(bytes) under test; `allowed`: the errors its contract permits; `json`: the input
    is JSON, so structure-aware mutations (replace or drop a value) pay off."""

    def __init__(self, fn, allowed, json_input=False):
        self.fn = fn
        self.allowed = allowed
        self.json = json_input
        self.last_failure = None  # the last input that broke the contract (the minimal one)

    def check(self, data):
        try:
            self.fn(data)
        except self.allowed:
            pass
        except BaseException:
            self.last_failure = data
            raise


def bundle_head(data):
    """Header, envelope and manifest, then (format 2) the chunk indexes, then every payload's
    bytes against the manifest: what `bundle verify` reads, without the signatures."""
    stream = io.BytesIO(data)
    fmt.parse_header(data[: fmt.HEADER_SIZE]) if len(data) >= fmt.HEADER_SIZE else None
    manifest, _ = open_bundle(stream.read)
    indexes = read_indexes(stream.read, manifest)
    for payload in manifest.payloads:
        if payload.name in indexes:
            blocks = chunked.stream_blocks(
                lambda n: read_exact(stream.read, n, "payload"), payload, indexes[payload.name]
            )
            for _ in blocks:
                pass
        else:
            check_payload(stream.read, payload, chunk_size=4096)


class _IndexedPayload:
    """The manifest fields a chunk index is checked against, its sha256 signed as given."""

    def __init__(self, stored, installed_size, size):
        self.name = "rootfs"
        self.index = {"sha256": hashlib.sha256(stored).hexdigest(), "size": len(stored)}
        self.installed_size = installed_size
        self.size = size


def chunk_index(data):
    """A format-2 payload's chunk index: 8 bytes installed size and 8 bytes stored size (the
    manifest's), then the index as stored (zstd). The same bytes are also parsed as an
    uncompressed index, so mutations reach the field checks behind the decompression."""
    if len(data) < 16:
        return
    installed, size = struct.unpack(">QQ", data[:16])
    installed %= 1 << 24  # a signer's installed size bounds the inflating; keep runs small
    stored = bytes(data[16:])
    payload = _IndexedPayload(stored, installed, size)
    for parse in (chunked.read_index, ci.parse_index):
        try:
            index = parse(stored, payload)
        except MalformedBundle:
            continue
        assert index.count * index.block_size >= installed > (index.count - 1) * index.block_size
        assert index.detail_size + index.stored_size + index.front_size == size  # and front
        assert len(index.lengths) == index.count
        assert sum(g[3] for g in index.groups) == index.stored_size
        for g, (entry_at, entry_n, frame_at, frame_n) in index.front.items():
            assert index.detail_size + index.stored_size <= entry_at
            assert entry_n == ci.entry_size(index.groups[g][1]) and frame_at + frame_n <= size


def envelope(data):
    env = parse_envelope(data)
    assert parse_envelope(env.encode()).payload == env.payload  # what it re-encodes reads back
    parse_manifest(env.payload)


def manifest(data):
    m = parse_manifest(data)
    assert m.raw == bytes(data) and m.payload_bytes >= 0


def root(data):
    r = keyring.parse_root(data)
    for name in keyring.ROLES:
        role = r.role(name)
        assert 1 <= role.threshold <= len(role.keyids)


def job(data):
    parsed = parse_job(data, DEVICE, checks=JOB_CHECKS)
    # What the journal stores must come back as the same job.
    assert job_from_dict(json.loads(json.dumps(parsed.to_dict()))) == parsed


def uboot_env_copy(data):
    """Both layouts, as read, and with the CRC made right so the data area gets parsed."""
    for redundant, head in ((False, 4), (True, 5)):
        uboot_env.parse_copy(data, redundant)
        body = data[head:]
        fixed = struct.pack("<I", binascii.crc32(body)) + data[4:head] + body
        uboot_env.parse_copy(fixed, redundant)
    uboot_env.decode_data(data)


def grubenv_block(data):
    items = grubenv.parse(data)
    variables = grubenv.variables(items)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in variables.items())


def fw_env_config(data):
    uboot_env.parse_config(data.decode("utf-8", "replace"))


def kernel_cmdline(data):
    slot_from_cmdline(data.decode("utf-8", "replace"), ("A", "B"))


TARGETS = {
    "bundle-head": Target(bundle_head, (MalformedBundle, Truncated, PayloadMismatch)),
    "envelope": Target(envelope, (MalformedBundle,), json_input=True),
    "manifest": Target(manifest, (MalformedBundle,), json_input=True),
    "root": Target(root, (MalformedBundle,), json_input=True),
    "job": Target(job, (MalformedJob, WrongModel), json_input=True),
    "uboot-env": Target(uboot_env_copy, (BootEnvError,)),
    "grubenv": Target(grubenv_block, (BootEnvError,)),
    "fw-env-config": Target(fw_env_config, (BootEnvError,)),
    "kernel-cmdline": Target(kernel_cmdline, (BootEnvError,)),
    "chunk-index": Target(chunk_index, (MalformedBundle,)),
    "local-api": Target(frontends.local_api_line, frontends.ALLOWED["local-api"], True),
    "ocpp-update-firmware": Target(frontends.ocpp_update_firmware,
                                   frontends.ALLOWED["ocpp-update-firmware"], True),
    "everest-request": Target(frontends.everest_request, frontends.ALLOWED["everest-request"],
                              True),
    "mqtt-job-message": Target(frontends.mqtt_job_message,
                               frontends.ALLOWED["mqtt-job-message"], True),
}  # fmt: skip


def corpus_files(name):
    directory = os.path.join(CORPUS, name)
    return sorted(os.path.join(directory, f) for f in os.listdir(directory))


def load_corpus(name):
    seeds = []
    for path in corpus_files(name):
        with open(path, "rb") as f:
            seeds.append(f.read())
    return seeds
