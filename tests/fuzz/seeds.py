"""Write the seed corpus: `python -m tests.fuzz.seeds` (the files are kept in the repo; run
this only to add seeds). Each seed is a valid input as the real tools make it, so mutations
start deep inside each parser instead of at its first check."""

import base64
import datetime
import json
import os
import struct
import tempfile
import time

from agent.bundle import format as fmt
from agent.bundle.writer import PayloadSource, create_bundle
from agent.core.envelope import parse_envelope
from agent.core.manifest import parse_manifest
from bootloader_iface import grubenv, uboot_env
from tests.bundle.factory import HW, MODEL, default_keys, make_bundle, make_keys, root_envelope
from tests.bundle.pki import UTC, make_cert, new_key, pem
from tests.fuzz.frontends import MANUFACTURER_ROOT
from tests.fuzz.targets import CORPUS

RAUC_ENV = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0",
            "bootcmd": "run boot_select; boot", "stdin": "serial", "stdout": "serial"}  # fmt: skip


def _bundles(tmp):
    out = {}
    for name, compress, payloads in (
        ("plain", False, {"rootfs": b"root filesystem bytes " * 8}),
        ("gzip-two", True, {"rootfs": b"r" * 300, "app": ("appfs", b"application " * 20)}),
    ):
        path, root = make_bundle(tmp, payloads, version="1.2.0-rc.1", compress=compress,
                                 name=name + ".cub")  # fmt: skip
        with open(path, "rb") as f:
            out[name] = f.read()
    return out


def _chunked_bundle(tmp, front=False):
    """A format-2 bundle: 12 blocks of 4 KiB, two of them zeros (nothing stored); with
    `front`, packed for a base image that has only its first blocks (front frames)."""
    image = os.path.join(tmp, "image")
    blocks = [(b"block %d of the image " % i) * 200 for i in range(10)]
    with open(image, "wb") as f:
        f.write(b"".join(b[:4096] for b in blocks[:5]) + bytes(8192)
                + b"".join(b[:4096] for b in blocks[5:]))  # fmt: skip
    bases = []
    if front:
        bases.append(os.path.join(tmp, "base"))
        with open(bases[0], "wb") as f:
            f.write(b"".join(b[:4096] for b in blocks[:3]))
    out = os.path.join(tmp, "chunked-front.cub" if front else "chunked.cub")
    create_bundle(out, [PayloadSource("rootfs", "rootfs", image, "zstd-chunks", bases=bases)],
                  [default_keys()[1]], version="2.0.0", security_version=1,
                  compatible=[{"model": MODEL, "hardware_revisions": [HW]}],
                  expires=int(time.time()) + 86400)  # fmt: skip
    with open(out, "rb") as f:
        return f.read()


def _chunk_indexes(bundle):
    """chunk-index seeds from a format-2 bundle: its stored index and the index inflated,
    each behind the payload's installed and stored sizes (tests/fuzz/targets.py)."""
    import zstandard

    length = fmt.parse_header(bundle[: fmt.HEADER_SIZE])
    manifest = parse_manifest(parse_envelope(bundle[fmt.HEADER_SIZE :
                                                    fmt.HEADER_SIZE + length]).payload)  # fmt: skip
    ((payload, offset),) = fmt.index_offsets(length, manifest)
    stored = bundle[offset : offset + payload.index["size"]]
    sizes = struct.pack(">QQ", payload.installed_size, payload.size)
    raw = zstandard.ZstdDecompressor().decompress(stored)
    return {"stored": sizes + stored, "raw": sizes + raw}


def _manufacturer_pki():
    """A manufacturer root valid to 2099 (kept as tests/fuzz/manufacturer-root.pem) and a
    signer's certificate it issued, which the front-end seeds carry."""
    far = datetime.datetime(2099, 1, 1, tzinfo=UTC)
    since = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    root_key, signer_key = new_key(), new_key()
    root = make_cert(root_key, "Fuzz Manufacturer Root", ca=True, not_before=since,
                     not_after=far)  # fmt: skip
    signer = make_cert(signer_key, "Fuzz Firmware Signer", root_key, root, not_before=since,
                       not_after=far)  # fmt: skip
    with open(MANUFACTURER_ROOT, "wb") as f:
        f.write(pem(root))
    return pem(signer).decode()


def _frontend_seeds(cert):
    signature = base64.b64encode(b"\x30" * 70).decode()  # checked later, on the digest
    location = "https://fw.example/ac22-2.0.0.cub"
    update = {"op": "update_firmware", "request_id": 7, "location": location,
              "retrieve_at": "2026-11-25T01:00:00.000Z", "install_at": "2026-11-25T02:00:00Z",
              "retries": 2, "retry_interval_s": 30, "signing_certificate": cert,
              "signature": signature, "allow_new_sessions": False,
              "defer_download_during_transaction": True}  # fmt: skip
    local = {
        "update": update,
        "update-file": dict(update, location="file:///var/lib/charger-update/drop/b.cub"),
        "boot": {"op": "boot_notification", "status": "Accepted", "interval": 300,
                 "csms_time": "2026-11-25T00:00:00Z"},
        "events": {"op": "events", "wait_s": 1},
        "ack": {"op": "ack", "seq": 3, "error": "NotSupported"},
        "trigger": {"op": "trigger_status"},
        "ids": {"op": "get_installed_certificate_ids",
                "certificate_type": ["ManufacturerRootCertificate"]},
        "delete": {"op": "delete_certificate", "certificate_hash_data": {
            "hash_algorithm": "SHA256", "issuer_name_hash": "00", "issuer_key_hash": "00",
            "serial_number": "01"}},
    }  # fmt: skip
    firmware = {"location": location, "retrieveDateTime": "2026-11-25T01:00:00.000Z",
                "installDateTime": "2026-11-25T02:00:00Z", "signingCertificate": cert,
                "signature": signature}  # fmt: skip
    ocpp = {
        "signed": {"requestId": 7, "retries": 2, "retryInterval": 30, "firmware": firmware},
        "unsigned": {"requestId": 8, "firmware": {"location": location,
                                                  "retrieveDateTime": "2026-11-25T01:00:00Z"}},
    }  # fmt: skip
    everest = {
        "update": {"headers": {"replyTo": "everest_api/1/system/system_api/m2e/reply/1"},
                   "payload": {"request_id": 7, "location": location,
                               "retrieve_timestamp": "2026-11-25T01:00:00.000Z",
                               "retries": 3, "retry_interval_s": 30,
                               "signing_certificate": cert, "signature": signature}},
        "bare": {"request_id": -1, "location": location},
    }  # fmt: skip
    return local, ocpp, everest


def seeds():
    with tempfile.TemporaryDirectory() as tmp:
        bundles = _bundles(tmp)
        bundles["chunked"] = _chunked_bundle(tmp)
        bundles["chunked-front"] = _chunked_bundle(tmp, front=True)
    corpus = {"bundle-head": bundles, "envelope": {}, "manifest": {}}
    corpus["chunk-index"] = _chunk_indexes(bundles["chunked"])
    corpus["chunk-index"].update(("front-" + k, v) for k, v in
                                 _chunk_indexes(bundles["chunked-front"]).items())  # fmt: skip
    for name, data in bundles.items():
        length = fmt.parse_header(data[: fmt.HEADER_SIZE])
        raw = data[fmt.HEADER_SIZE : fmt.HEADER_SIZE + length]
        corpus["envelope"][name] = raw
        corpus["manifest"][name] = parse_envelope(raw).payload
    roots = {
        "ed25519": root_envelope(make_keys(1, tag="root"), make_keys(1, tag="release")),
        "ecdsa-2of2": root_envelope(
            make_keys(2, "ecdsa-p256", tag="r"), make_keys(2, "ecdsa-p256", tag="rel"), 2, 2, 3
        ),
    }
    corpus["envelope"]["root"] = roots["ed25519"]
    corpus["root"] = dict((k, parse_envelope(v).payload) for k, v in roots.items())
    corpus["job"] = {
        "full": {"job_id": "rollout-17", "url": "https://fw.example/ac22-1.1.0.cub",
                 "version": "1.1.0", "models": ["ACME-AC22"], "retrieve_at":
                 "2026-11-25T01:00:00Z", "install_at": "2026-11-25T02:00:00+01:00",
                 "deadline": 1795600000, "window": {"start": "22:00", "end": "04:30"},
                 "jitter_s": 900, "retries": 5, "checks": ["alarms"], "trial_window_s": 300},
        "ocpp": {"requestId": 42, "location": "file:///var/lib/charger-update/drop/b.cub",
                 "retrieveDateTime": "2026-11-25T01:00:00.123Z", "version": "2.0.0"},
        "minimal": {"id": "j", "url": "http://10.0.0.1/b.cub", "version": "1"},
    }  # fmt: skip
    corpus["job"] = dict((k, json.dumps(v).encode()) for k, v in corpus["job"].items())
    corpus["mqtt-job-message"] = dict(corpus["job"])
    local, ocpp, everest = _frontend_seeds(_manufacturer_pki())
    corpus["local-api"] = dict((k, json.dumps(v).encode() + b"\n") for k, v in local.items())
    corpus["ocpp-update-firmware"] = dict((k, json.dumps(v).encode()) for k, v in ocpp.items())
    corpus["everest-request"] = dict((k, json.dumps(v).encode()) for k, v in everest.items())
    corpus["uboot-env"] = {
        "single": uboot_env.encode_copy(RAUC_ENV, 0x400, False),
        "redundant": uboot_env.encode_copy(RAUC_ENV, 0x400, True, flags=7),
    }
    corpus["grubenv"] = {
        "rauc": grubenv.encode([("var", k, v) for k, v in sorted(RAUC_ENV.items())]),
        "escapes": grubenv.encode([("var", "odd", "a\\b\nc"), ("var", "ORDER", "B A")]),
    }
    corpus["fw-env-config"] = {
        "single": b"/dev/mtd1 0x0 0x20000 0x10000\n",
        "redundant": b"# two copies\n/boot/uboot.env 0x0 0x4000\n/boot/uboot.env 0x4000 0x4000\n",
    }
    corpus["kernel-cmdline"] = {
        "rauc": b"console=ttyS0 root=/dev/mmcblk0p2 rauc.slot=A rootwait\n",
        "ours": b"quiet charger.slot=B charger.slot=A\n",
    }
    return corpus


def main():
    for target, files in seeds().items():
        directory = os.path.join(CORPUS, target)
        os.makedirs(directory, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(directory, "seed-%s.bin" % name), "wb") as f:
                f.write(data)
            print("%s/seed-%s.bin %d bytes" % (target, name, len(data)))


if __name__ == "__main__":
    main()
