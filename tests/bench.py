"""`make bench`: installing a signed bundle, as whole processes, against `dd` on the same medium.

Usage: python -m tests.bench [--quick] [--sizes 256,1024] [--repeat N] [--dir DIR] [--skip-process]

For each size (MiB) a random payload is signed into a bundle (Ed25519); then, from a local
file and from a local HTTP server (hil/services/httpserver.py, in a thread of this process),
every case runs as its own process:

  dd            `dd bs=1M conv=fsync` of the bundle into the slot file (file source only): the
                reference, what the medium takes through the page cache with one fsync
  dd-direct     `dd bs=1M oflag=direct`: the medium written with O_DIRECT, no page cache
  dd-rw         `dd oflag=direct` into the slot and, at the same time, `dd iflag=direct` of
                as many bytes: what a read-back asks of the medium, the ceiling of any
                install that reads its slot back
  install       `charger-update install SOURCE` as a charger runs it (a wheel install of this
                tree, tests/bench_process.py): start-up, signature and policy checks,
                streaming, fsync, the read-back of the slot, the boot switch
  install-norb  the same with `[readback] rootfs = false` (the per-slot choice, docs/transfer.md)
  copy+slot     in-process: the bundle's bytes through the installer's slot writer, no
                hashing (the install path's own I/O)
  verified      in-process: agent.transfer.installer.install without the read-back
  verified+rb   in-process: the same with the read-back

Cases run in rounds (--repeat, default 5), all cases of a round in an order shuffled per round
(seeded: reruns use the same orders). Each row's ratio pairs every round's case with that
round's `dd` (dd seconds / case seconds: 1.0 is the medium's speed through the page cache);
the median over rounds is printed with its range; "disk ms" and "disk MiB" are the slot
device's busy time and the bytes it read and wrote (/proc/diskstats, as iostat). A missed
target prints its ceilings on this machine: dd over dd-rw for a case that reads back, and
dd over the case's CPU-seconds spread across every core. Peak RSS is the process's own (VmHWM, or
ru_maxrss through a small spawner for whole processes). The run also measures SHA-256 on one
core, the ceiling for any verified install here. Then the fixed cost (start-up bound commands)
and the idle daemon (tests/bench_process.py) follow.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

from agent.config import DOWNLOAD_DEFAULTS
from tests import bench_process as bp

MiB = 1 << 20
CHUNK = DOWNLOAD_DEFAULTS["chunk_size"]  # what a charger's install uses
# Issue 12's targets, as ratios to `dd bs=1M conv=fsync` in the same run: (case, MiB) -> ratio.
TARGETS = {("install", 1024): 0.85, ("install", 256): 0.7, ("install-norb", 1024): 0.95}
RSS_LIMIT_MIB = 40
BUSY_SHARE = 0.15  # CPU share other processes used before the run: above it, rerun
PROCESS_CASES = ("dd", "dd-direct", "dd-rw", "install", "install-norb")  # whole processes
CASES = PROCESS_CASES + ("copy+slot", "verified", "verified+rb")
FILE_ONLY = ("dd", "dd-direct", "dd-rw")  # dd copies files only
READS_BACK = ("install", "verified+rb")  # cases that read the slot back: bound by dd-rw


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
    from agent.transfer.installer import install
    from agent.trust.store import Trust
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
[state]
dir = "state"
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
    with open(norb_config(config_path), "w") as f:
        f.write(BOARD % {"model": MODEL, "hw": HW, "target": target, "chunk": CHUNK})
        f.write("[readback]\nrootfs = false\n")
    return bundle, config_path


def copy_case(source_location, payload, target):
    """The bundle's bytes read into the installer's aligned chunk buffers (a reader thread,
    as when installing) and written through the slot writer the installer uses (O_DIRECT
    where the file system takes it), then fsynced: no hashing, no read-back."""
    from agent.transfer.pipeline import prefetch
    from agent.transfer.slots import ChunkBuffers, SlotTarget, read_into_buffers

    if source_location.startswith("http"):
        parts = urlsplit(source_location)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.request("GET", parts.path)
        src = conn.getresponse()
    else:
        src = open(source_location, "rb", buffering=0)
    writer = SlotTarget(target).open_writer()
    buffers = ChunkBuffers(CHUNK)
    chunks = read_into_buffers(src.readinto, payload, buffers)
    try:
        for view in prefetch(chunks):
            writer.write(view)
            buffers.give_back(view)
        writer.sync()
    finally:
        writer.close()
        src.close()


def vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_seconds():
    """User + system CPU of this process and its waited-for children (dd)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def child_main(args):
    import agent.transfer.installer  # noqa: F401  imports are not part of the measured install
    import agent.trust.store  # noqa: F401
    import bootloader_iface  # noqa: F401

    payload = BenchPayload(args.size, args.sha256)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    if args.child == "copy+slot":
        copy_case(args.source, payload, args.target)
    else:
        bench_case(args.source, args.config, readback=args.child == "verified+rb")
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "hwm_kib": vm_hwm_kib(), "cpu": cpu_seconds() - cpu_start}
    print(json.dumps(result))
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


def process_command(case, source, target, config_path, cu):
    """The command line of a whole-process case."""
    if case == "dd":
        return [bp.tool("dd"), "if=" + source, "of=" + target, "bs=1M", "conv=fsync", "status=none"]
    if case == "dd-direct":
        return [bp.tool("dd"), "if=" + source, "of=" + target, "bs=1M", "oflag=direct",
                "status=none"]  # fmt: skip
    if case == "dd-rw":
        # What a read-back asks of the medium: the image written and, at the same time, as
        # many bytes read from it (O_DIRECT both, so the page cache serves neither).
        return [bp.tool("sh"), "-c", 'dd if="$1" of="$2" bs=1M oflag=direct status=none & '
                'dd if="$1" of=/dev/null bs=1M iflag=direct status=none; wait', "dd-rw",
                source, target]  # fmt: skip
    if case == "install-norb":
        config_path = norb_config(config_path)
    return [cu, "--config", config_path, "install", source]


def norb_config(config_path):
    """The bench board's config with the read-back turned off for its slot class."""
    return config_path[: -len(".toml")] + "-norb.toml"


def block_device(path):
    """The /proc/diskstats name of the block device holding `path` (a partition's own name),
    or None (tmpfs, overlay, anything without one)."""
    st = os.stat(path)
    link = "/sys/dev/block/%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
    try:
        return os.path.basename(os.path.realpath(link)) if os.path.exists(link) else None
    except OSError:
        return None


def disk_sample(device):
    """(ms the device had I/O in flight, sectors read, sectors written) from /proc/diskstats,
    what iostat's %util and rkB/s, wkB/s come from; None without a device."""
    if device is None:
        return None
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 12 and fields[2] == device:
                    return int(fields[12]), int(fields[5]), int(fields[9])
    except OSError:
        pass
    return None


def disk_delta(before, after):
    if before is None or after is None:
        return {}
    return {"disk_ms": after[0] - before[0], "disk_read": (after[1] - before[1]) * 512,
            "disk_written": (after[2] - before[2]) * 512}  # fmt: skip


def run_child(case, source, payload, target, config_path, cu=None):
    if os.path.exists(target):
        os.unlink(target)
    os.sync()  # earlier cases' dirty pages must not be flushed on this case's clock
    device = block_device(os.path.dirname(os.path.abspath(target)))
    before = disk_sample(device)
    if case in PROCESS_CASES:
        r = bp.measured(process_command(case, source, target, config_path, cu))
        # dd's own peak RSS is below the spawner's (about 7 MiB): not shown
        result = {"seconds": r["seconds"], "cpu": r["cpu"],
                  "hwm_kib": 0 if case in FILE_ONLY else r["maxrss_kib"]}  # fmt: skip
        result.update(disk_delta(before, disk_sample(device)))
        return result
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "tests.bench", "--child", case, "--source", source]
    cmd += ["--target", target, "--size", str(payload.size), "--sha256", payload.sha256]
    cmd += ["--config", config_path]
    out = subprocess.run(cmd, env=env, cwd=root, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(disk_delta(before, disk_sample(device)))
    return result


def round_cases(sources, have_dd=True):
    """Every (source kind, location, case) of one round."""
    out = []
    for kind, location in sources:
        for case in CASES:
            if case in FILE_ONLY and (kind != "file" or not have_dd):
                continue
            out.append((kind, location, case))
    return out


def measure(sources, payload, target, repeat, config_path, cu):
    """{(source kind, case): [results, one per round]}. All cases of a round run in one
    shuffled order (seeded: reruns use the same orders), so slow phases of the host hit every
    case alike and each round's ratio pairs runs seconds apart. On this VM a buffered copy
    right after a case that freed 1 GiB of page cache runs at half speed (the guest hands
    freed memory back to the host, and taking it again faults): a fixed order would charge
    that to the same case every round."""
    runs = {}
    cases = round_cases(sources, have_dd=shutil.which("dd") is not None)
    for n in range(repeat):
        rng = random.Random(n)
        for kind, location, case in rng.sample(cases, len(cases)):
            result = run_child(case, location, payload, target, config_path, cu)
            runs.setdefault((kind, case), []).append(result)
    return runs


def summarise(size_mib, kind, case, results, base_results, size_bytes, rw_results=None):
    """One table row: median and range of MiB/s, and the per-round ratio to `dd`."""
    mib = size_bytes / MiB
    rates = sorted(mib / r["seconds"] for r in results)
    ratios = sorted(b["seconds"] / r["seconds"] for r, b in zip(results, base_results))
    hwm = max(r["hwm_kib"] for r in results) / 1024.0 if results[0]["hwm_kib"] else None
    row = {
        "size": size_mib, "src": kind, "case": case, "rate": statistics.median(rates),
        "rate_lo": rates[0], "rate_hi": rates[-1], "ratio": statistics.median(ratios),
        "ratio_lo": ratios[0], "ratio_hi": ratios[-1], "hwm": hwm,
        "cores": statistics.median(r["cpu"] / r["seconds"] for r in results),
        "disk_ms": None, "disk_mib": None, "medium_bound": None, "cpu_s": statistics.median(
            r["cpu"] for r in results),
        # The best ratio this case could reach if its CPU work spread over every core
        # with nothing else to wait for: dd's seconds over (CPU seconds / cores).
        "cpu_bound": statistics.median(
            b["seconds"] / max(r["cpu"] / (os.cpu_count() or 1), 1e-9)
            for r, b in zip(results, base_results)
        ),
    }  # fmt: skip
    if all("disk_ms" in r for r in results):
        # The device's busy time (iostat's %util over the run) and the bytes it moved.
        row["disk_ms"] = statistics.median(r["disk_ms"] for r in results)
        row["disk_mib"] = statistics.median(
            (r["disk_read"] + r["disk_written"]) / float(MiB) for r in results
        )
    if case in READS_BACK and rw_results:
        # Writing the image and reading as much back cannot beat the medium doing both.
        row["medium_bound"] = statistics.median(
            b["seconds"] / rw["seconds"] for rw, b in zip(rw_results, base_results)
        )
    return row


def table(rows):
    head = "%-5s %-4s %-12s %9s %15s %6s %13s %8s %5s %7s %7s" % (
        "MiB", "src", "case", "MiB/s", "(min-max)", "ratio", "(min-max)", "peakRSS", "cores",
        "disk ms", "disk MiB",
    )  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        rss = "%7.1fM" % r["hwm"] if r["hwm"] is not None else "%8s" % "-"
        rates = "(%.0f-%.0f)" % (r["rate_lo"], r["rate_hi"])
        ratios = "(%.2f-%.2f)" % (r["ratio_lo"], r["ratio_hi"])
        disk = ("%7d %7.0f" % (r["disk_ms"], r["disk_mib"])) if r["disk_ms"] is not None else ""
        lines.append(
            "%-5d %-4s %-12s %9.1f %15s %6.3f %13s %s %5.2f %s"
            % (r["size"], r["src"], r["case"], r["rate"], rates, r["ratio"], ratios, rss,
               r["cores"], disk)
        )  # fmt: skip
    return "\n".join(lines)


def verdict(rows, hash_rate, busy):
    notes = []
    if busy:
        notes.append(
            "other processes kept the CPUs busy before the run: the figures are skewed, "
            "run again on an idle machine"
        )
    for r in rows:
        target = TARGETS.get((r["case"], r["size"]))
        if target is not None:
            ok = "meets" if r["ratio"] >= target else "MISSES"
            notes.append(
                "%d MiB %s: %s/dd %.3f (median of rounds; %.2f-%.2f) %s the %.2f target"
                % (r["size"], r["src"], r["case"], r["ratio"], r["ratio_lo"], r["ratio_hi"],
                   ok, target)
            )  # fmt: skip
            if r["ratio"] < target:
                notes.append("  " + bounds(r, target))
        if r["hwm"] is not None and r["hwm"] >= RSS_LIMIT_MIB:
            notes.append(
                "%d MiB %s %s: peak RSS %.1f MiB, over the %d MiB target"
                % (r["size"], r["src"], r["case"], r["hwm"], RSS_LIMIT_MIB)
            )
    notes.append(
        "SHA-256 on one core (hashlib, data in cache): %.0f MiB/s, the ceiling of any verified "
        "install" % hash_rate
    )
    return "\n".join(notes)


def bounds(row, target):
    """Why a ratio was missed, in figures: the most this case could reach on this machine if
    the medium never idled (its busy time, as iostat sees it) or if its CPU work were spread
    over every core. A bound under the target means no scheduling of the same work gets there."""
    parts = ["ceilings (medians of rounds):"]
    if row["medium_bound"] is not None:
        parts.append("the medium writing and reading at once (dd-rw) allows <= %.2f;"
                     % row["medium_bound"])  # fmt: skip
    parts.append(
        "its %.2f CPU-seconds spread over %d cores, <= %.2f"
        % (row["cpu_s"], os.cpu_count() or 1, row["cpu_bound"])
    )
    lowest = min(b for b in (row["medium_bound"], row["cpu_bound"]) if b is not None)
    if lowest < target:
        parts.append("-> out of reach on this machine" + (
            " with the read-back ([readback], docs/transfer.md)" if row["case"] in READS_BACK
            else ""))  # fmt: skip
    return " ".join(parts)


def hash_ceiling(total=256 * MiB):
    """MiB/s of hashlib.sha256 on one core over a cache-resident chunk, as the pipeline hashes
    each chunk right after reading it: the compute bound on any verified install. Best of 3."""
    block = os.urandom(CHUNK)
    best = 0.0
    for _ in range(3):
        digest = hashlib.sha256()
        start = time.perf_counter()
        for _ in range(total // CHUNK):
            digest.update(block)
        best = max(best, total / MiB / (time.perf_counter() - start))
    return best


def busy_fraction(seconds=1.0):
    """Share of all CPUs busy over `seconds` before the run (/proc/stat; None elsewhere): the
    load average lags by minutes, this sees what other processes are doing now."""

    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)  # a measuring interval, not a synchronisation
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / float(max(total1 - total0, 1))


def run(sizes, repeat, workdir):
    from hil.services.httpserver import FileServer

    cu = bp.shipped()
    rows = []
    for size_mib in sizes:
        src_path = os.path.join(workdir, "payload-%d.bin" % size_mib)
        target = os.path.join(workdir, "slot.img")
        make_payload(src_path, size_mib * MiB)
        bundle, config_path = make_bundle(workdir, src_path, target)
        os.unlink(src_path)
        payload = BenchPayload(os.path.getsize(bundle), "")  # dd and copy+slot copy the bundle
        server = FileServer({"bundle.cub": bundle}).start()
        try:
            sources = [("file", bundle), ("http", server.url("bundle.cub"))]
            runs = measure(sources, payload, target, repeat, config_path, cu)
        finally:
            server.stop()
            os.unlink(bundle)
        reference = runs.get(("file", "dd"))
        for kind, _location in sources:
            for case in CASES:
                if (kind, case) in runs:
                    base = reference or runs[(kind, case)]
                    rows.append(summarise(size_mib, kind, case, runs[(kind, case)], base,
                                          payload.size, runs.get(("file", "dd-rw"))))  # fmt: skip
    return rows


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="32 MiB, one round (CI smoke)")
    p.add_argument("--sizes", help="comma-separated MiB (default 256,1024)")
    p.add_argument("--repeat", type=int, help="rounds per case, median taken (default 5)")
    p.add_argument("--dir", help="where to put payloads and the slot (default: a temp dir)")
    p.add_argument(
        "--fleet-chargers",
        type=int,
        help="fleet section size (default 100000, "
        "--quick 1000; 0 skips it; see tests/bench_fleet.py)",
    )
    p.add_argument(
        "--dev", action="store_true",
        help="run the development venv's charger-update, not a wheel install (smoke runs)",
    )  # fmt: skip
    p.add_argument(
        "--skip-process", action="store_true",
        help="leave out the fixed-cost and idle-daemon sections",
    )  # fmt: skip
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
    bp.DEV = args.dev
    default_sizes = "32" if args.quick else "256,1024"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    repeat = args.repeat or (1 if args.quick else 5)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)  # a fresh --dir is made, as a user expects
    workdir = tempfile.mkdtemp(prefix="charger-bench-", dir=args.dir)
    busy = busy_fraction()
    try:
        hash_rate = hash_ceiling()
        rows = run(sizes, repeat, workdir)
        if not args.skip_process:
            fixed = bp.fixed_cost(workdir, 2 if args.quick else 15)
            idle_s = 2.0 if args.quick else 30.0
            idle = bp.idle_daemon(workdir, idle_s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    print(
        "MiB/s: median (min-max) of %d rounds; ratio: each round's `dd bs=1M conv=fsync` "
        "seconds over the case's, median (min-max); peak RSS: of the process itself; cores: "
        "its CPU seconds over wall seconds (the HTTP server runs in the parent, not counted)"
        % repeat
    )
    if busy is not None:
        print("CPUs busy before the run: %.0f%% of %d" % (100 * busy, os.cpu_count() or 0))
    print(verdict(rows, hash_rate, busy=busy is not None and busy > BUSY_SHARE))
    if not args.skip_process:
        print()
        print(bp.fixed_cost_table(fixed))
        print(bp.idle_table(idle, idle_s))
    fleet = (
        args.fleet_chargers if args.fleet_chargers is not None else (1000 if args.quick else 100000)
    )
    if fleet:
        from tests import bench_fleet

        bench_fleet.run(fleet, 1 if args.quick else 3, busy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
