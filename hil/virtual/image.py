"""Build the virtual board's firmware image: a tar of the charging stack plus the agent.

The image is a real runnable payload: the boot ROM extracts it and runs its init, and the
agent that then runs is the one inside the image, so a release really ships its own agent.
`defects` make one of the broken builds the HIL catalogue must catch:
crash-on-boot, no-backend, refuse-session, alarm-storm, hang-agent, faults-under-load,
agent-crash-loop, sessions-fail-later.
"""

import io
import os
import tarfile

import tomli_w

from hil.virtual.board import REPO

DEFECTS = (
    "crash-on-boot", "no-backend", "refuse-session", "alarm-storm", "hang-agent",
    "faults-under-load",  # passes the trial, then trips on the next real sessions
    "agent-crash-loop",  # the shipped agent dies a moment after every start
    "sessions-fail-later",  # passes the trial's session, then real sessions fail (no alarm)
)  # fmt: skip
PACKAGES = (
    ("agent", os.path.join(REPO, "agent")),
    ("bootloader_iface", os.path.join(REPO, "bootloader_iface")),
    ("charger_fw", os.path.join(REPO, "hil", "virtual", "firmware", "charger_fw")),
)


class _RandomReader:
    def __init__(self, size):
        self.left = size

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def _skip_cache(info):
    return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info


def build_image(out_path, version, defects=(), pad_bytes=0):
    """Write the image; `pad_bytes` of random data (a stand-in for a real root filesystem's
    bulk) make installs long enough for scenarios to cut power or the network mid-write."""
    unknown = [d for d in defects if d not in DEFECTS]
    if unknown:
        raise ValueError("unknown firmware defect(s) %s; known: %s" % (unknown, ", ".join(DEFECTS)))
    manifest = tomli_w.dumps({"version": version, "defects": list(defects)})
    with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as tar:
        data = manifest.encode()
        info = tarfile.TarInfo("firmware.toml")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
        for name, path in PACKAGES:
            tar.add(path, arcname=name, filter=_skip_cache)
        if pad_bytes:
            info = tarfile.TarInfo("usr/share/bulk.bin")
            info.size, info.mode, info.mtime = pad_bytes, 0o644, 0
            tar.addfile(info, _RandomReader(pad_bytes))
    return out_path


def main(argv=None):
    """`python -m hil.virtual.image --version V --out PATH [--defects a,b] [--pad-bytes N]`:
    the release builder a bench rig file can name for a board running this firmware."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m hil.virtual.image", description=main.__doc__)
    p.add_argument("--version", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--defects", default="", help="comma-separated: %s" % ", ".join(DEFECTS))
    p.add_argument("--pad-bytes", type=int, default=0)
    args = p.parse_args(argv)
    defects = [d for d in args.defects.split(",") if d]
    build_image(args.out, args.version, defects, args.pad_bytes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
