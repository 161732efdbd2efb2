"""Write the seed corpus: `python -m tests.fuzz.seeds` (the files are kept in the repo; run
this only to add seeds). Each seed is a valid input as the real tools make it, so mutations
start deep inside each parser instead of at its first check."""

import json
import os
import tempfile

from agent.bundle import format as fmt
from agent.core.envelope import parse_envelope
from bootloader_iface import grubenv, uboot_env
from tests.bundle.factory import make_bundle, make_keys, root_envelope
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


def seeds():
    with tempfile.TemporaryDirectory() as tmp:
        bundles = _bundles(tmp)
    corpus = {"bundle-head": bundles, "envelope": {}, "manifest": {}}
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
