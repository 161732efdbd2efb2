"""`make bench`: installing a signed bundle against a plain copy of the same bytes.

Usage: python -m tests.bench [--quick] [--sizes 256,1024] [--repeat N] [--dir DIR]

For each size (MiB) a random payload is signed into a bundle (Ed25519); then, from a local
file and from a local HTTP server (hil/services/httpserver.py, in a thread of this process),
each case runs in its own child process so its peak RSS (VmHWM) is the install's alone:

  baseline       plain read + write + fsync of the bundle's bytes, no hashing (1 MiB chunks)
  copy+wb        the same plain copy through SlotWriter (windowed writeback), no hashing:
                 the verified path's own I/O, so verified/copy+wb is the cost of verifying
  verified       agent.installer.install without read-back: signature, policy, sha256,
                 write, fsync into the inactive file slot
  verified+rb    what `charger-update install` does: the same plus the read-back of the slot
                 and its sha256 (doubles the I/O)

The ratio is MB/s over the same source's baseline. The issue's target (>= 0.85 of baseline
while verifying) is compared against `verified`, which moves the same bytes as the baseline;
`verified+rb` is what an install really costs and is printed next to it. Median of --repeat
runs, cases interleaved. `bench_case` is the boundary to swap for the full bundle installer.
"""

import argparse
import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

MiB = 1 << 20
CHUNK = MiB
TARGET_RATIO = 0.85
RSS_LIMIT_MIB = 64
CASES = ("baseline", "copy+wb", "verified", "verified+rb")


class BenchPayload:
    def __init__(self, size, sha256):
        self.name = "rootfs"
        self.size = self.installed_size = size
        self.sha256 = self.installed_sha256 = sha256
        self.compression = "none"


# -- what runs in the child ------------------------------------------------------------------


def bench_case(source_location, config_path, readback):
    """One install of the bundle at `source_location` into the board `config_path` names."""
    from agent import config
    from agent.installer import install
    from agent.trust import Trust
    from bootloader_iface import open_from_config

    cfg = config.load(config_path)
    install(source_location, cfg, open_from_config(cfg), Trust.from_config(cfg), readback=readback)


BOARD = """[device]
id = "bench"
model = "%(model)s"
hardware_revision = "%(hw)s"
[slots.A]
rootfs = "slotA.img"
[slots.B]
rootfs = "%(target)s"
[bootloader]
backend = "simulated"
state = "boot-env.json"
booted = "A"
[trust]
root = "root.json"
[download]
chunk_size = %(chunk)d
"""


def make_bundle(workdir, payload_path, target):
    """Sign the payload into DIR/bundle.cub and write a board config; returns both paths."""
    from agent.bundle.writer import PayloadSource, create_bundle
    from tests.bundle.factory import HW, MODEL, make_keys, make_root

    key = make_keys(1, tag="bench")[0]
    make_root(os.path.join(workdir, "root.json"), release_keys=[key])
    bundle = os.path.join(workdir, "bundle.cub")
    create_bundle(
        bundle, [PayloadSource("rootfs", "rootfs", payload_path)], [key], version="1.0.0",
        security_version=1, compatible=[{"model": MODEL, "hardware_revisions": [HW]}],
        expires=int(time.time()) + 86400,
    )  # fmt: skip
    config_path = os.path.join(workdir, "agent.toml")
    with open(config_path, "w") as f:
        f.write(BOARD % {"model": MODEL, "hw": HW, "target": target, "chunk": CHUNK})
    return bundle, config_path


def baseline_case(source_location, payload, target, writer=None):
    """Plain copy: read, write, fsync; no hashing, no read-back. With `writer` (a SlotWriter)
    the writes go through its windowed writeback instead of one fsync at the end."""
    if source_location.startswith("http"):
        parts = urlsplit(source_location)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.request("GET", parts.path)
        src = conn.getresponse()
    else:
        src = open(source_location, "rb", buffering=0)
    if writer is not None:
        try:
            for data in iter(lambda: src.read(CHUNK), b""):
                writer.write(data)
            writer.sync()
        finally:
            writer.close()
            src.close()
        return
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            data = src.read(CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
        src.close()


def vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def child_main(args):
    import agent.installer  # noqa: F401  imports are not part of the measured install
    import agent.trust  # noqa: F401
    import bootloader_iface  # noqa: F401

    payload = BenchPayload(args.size, args.sha256)
    start = time.perf_counter()
    if args.child == "baseline":
        baseline_case(args.source, payload, args.target)
    elif args.child == "copy+wb":
        from agent.slots import SlotTarget

        baseline_case(args.source, payload, args.target, SlotTarget(args.target).open_writer())
    else:
        bench_case(args.source, args.config, readback=args.child == "verified+rb")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "hwm_kib": vm_hwm_kib()}))
    return 0


# -- the parent ------------------------------------------------------------------------------


def make_payload(path, size):
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(4 * MiB, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return BenchPayload(size, digest.hexdigest())


def run_child(case, source, payload, target, config_path):
    if os.path.exists(target):
        os.unlink(target)
    os.sync()  # earlier cases' dirty pages must not be flushed on this case's clock
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "tests.bench", "--child", case, "--source", source]
    cmd += ["--target", target, "--size", str(payload.size), "--sha256", payload.sha256]
    cmd += ["--config", config_path]
    out = subprocess.run(cmd, env=env, cwd=root, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(sources, payload, target, repeat, config_path):
    """{(source kind, case): (median MB/s, peak RSS MiB)}; cases interleaved per round."""
    runs = {}
    for _ in range(repeat):
        for kind, location in sources:
            for case in CASES:
                result = run_child(case, location, payload, target, config_path)
                runs.setdefault((kind, case), []).append(result)
    figures = {}
    for key, results in runs.items():
        seconds = [r["seconds"] for r in results]
        hwm = max(r["hwm_kib"] for r in results) / 1024.0
        mib = payload.size / MiB
        figures[key] = (mib / statistics.median(seconds), mib / min(seconds), hwm)
    return figures


def table(rows):
    head = "%-5s %-4s %-11s %8s %6s %8s %6s %8s" % (
        "MiB",
        "src",
        "case",
        "med MiB/s",
        "ratio",
        "best",
        "ratio",
        "peakRSS",
    )
    lines = [head, "-" * len(head)]
    for size_mib, kind, case, med, med_ratio, best, best_ratio, hwm in rows:
        lines.append(
            "%-5d %-4s %-11s %9.1f %6.3f %8.1f %6.3f %7.1fM"
            % (size_mib, kind, case, med, med_ratio, best, best_ratio, hwm)
        )
    return "\n".join(lines)


def verdict(rows):
    figures_by_case = dict(((r[0], r[1], r[2]), (r[3], r[5])) for r in rows)
    notes = []
    for size_mib, kind, case, _med, med_ratio, _best, best_ratio, hwm in rows:
        if case == "verified":
            ok = "meets" if med_ratio >= TARGET_RATIO else "MISSES"
            notes.append(
                "%d MiB %s: verified/baseline %.3f (median; best-of-runs %.3f) %s the %.2f target"
                % (size_mib, kind, med_ratio, best_ratio, ok, TARGET_RATIO)
            )
            copy = figures_by_case[(size_mib, kind, "copy+wb")]
            notes.append(
                "%d MiB %s: verified/copy+wb %.3f (median; best %.3f): the cost of hashing alone"
                % (size_mib, kind, _med / copy[0], _best / copy[1])
            )
        if hwm >= RSS_LIMIT_MIB:
            notes.append(
                "%d MiB %s %s: peak RSS %.1f MiB over %d MiB"
                % (size_mib, kind, case, hwm, RSS_LIMIT_MIB)
            )
    return "\n".join(notes)


def run(sizes, repeat, workdir):
    from hil.services.httpserver import FileServer

    rows = []
    for size_mib in sizes:
        src_path = os.path.join(workdir, "payload-%d.bin" % size_mib)
        target = os.path.join(workdir, "slot.img")
        make_payload(src_path, size_mib * MiB)
        bundle, config_path = make_bundle(workdir, src_path, target)
        os.unlink(src_path)
        payload = BenchPayload(os.path.getsize(bundle), "")  # baselines copy the bundle
        server = FileServer({"bundle.cub": bundle}).start()
        try:
            sources = [("file", bundle), ("http", server.url("bundle.cub"))]
            figures = measure(sources, payload, target, repeat, config_path)
        finally:
            server.stop()
            os.unlink(bundle)
        for kind, _location in sources:
            base = figures[(kind, "baseline")]
            for case in CASES:
                med, best, hwm = figures[(kind, case)]
                rows.append((size_mib, kind, case, med, med / base[0], best, best / base[1], hwm))
    return rows


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="32 MiB, one round (CI smoke)")
    p.add_argument("--sizes", help="comma-separated MiB (default 256,1024)")
    p.add_argument("--repeat", type=int, help="rounds per case, median taken (default 3)")
    p.add_argument("--dir", help="where to put payloads and the slot (default: a temp dir)")
    p.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sha256", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return child_main(args)
    default_sizes = "32" if args.quick else "256,1024"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    repeat = args.repeat or (1 if args.quick else 3)
    workdir = tempfile.mkdtemp(prefix="charger-bench-", dir=args.dir)
    load_before = os.getloadavg()
    try:
        rows = run(sizes, repeat, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    print(
        "ratio = MiB/s over the same source's baseline (median of %d runs, and best run); "
        "peak RSS = VmHWM of the child process" % repeat
    )
    print(
        "load average before %.2f, after %.2f on %d CPUs (other load skews the figures)"
        % (load_before[0], os.getloadavg()[0], os.cpu_count() or 0)
    )
    print(verdict(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
