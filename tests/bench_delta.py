"""`make bench-delta`: what a charger downloads for a release, side by side with the delta tools.

Usage: python -m tests.bench_delta [--pairs minor,major] [--repeat N] [--dir DIR]

Builds (once, cached under .cache/bench-delta) ext4 images from debootstrap trees
(tests/delta_images.py): base, a minor release and a major one. For each pair base -> new:

  adaptive   bytes `charger-update install` downloads for the format-2 bundle (packed with
             `--delta-base` the base image: front frames for it) with the base
             image in the booted slot and an empty inactive slot (head, chunk index, ranges
             with their multipart headers: counted by the HTTP server)
  xdelta3    size of `xdelta3 -e -9 -s base new` (a per-pair delta, Mender's binary delta)
  zchunk     what `zck_delta_size base.zck new.zck` says it would download
  casync     index plus the compressed chunks of the new image's store that the base
             image's store lacks (default casync chunking)
  full       the whole format-2 bundle (what a full install downloads)

and times a delta install and a full install (delta switched off) of the same bundle over a
loopback HTTP server, through a TCP proxy paced at 2 MB/s (a cellular link) and directly.
Installs alternate in rounds; the ratio is full seconds over delta seconds (>= 1 means the
delta install is no slower). The machine is shared: figures move with its load.
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from tests import delta_images

MB = 1000.0 * 1000.0
RATE = 2 * 1000 * 1000  # bytes/s of the simulated cellular link
TOOLS = {"xdelta3": "xdelta3", "zck": "zchunk", "casync": "casync", "debootstrap": "debootstrap"}
TARGETS = {"minor": 1.25, "major": 1.5}  # adaptive / xdelta3, from issue 15

BOARD = """[device]
id = "bench-delta"
model = "%(model)s"
hardware_revision = "%(hw)s"
[slots.A]
rootfs = "slotA.img"
[slots.B]
rootfs = "slotB.img"
[bootloader]
backend = "simulated"
state = "boot-env.json"
booted = "A"
[trust]
root = "%(root)s"
[state]
dir = "state"
[download]
delta = %(delta)s
"""


def cached(path, make):
    """Run make(tmp) to produce `path` once; reruns reuse it."""
    if not os.path.exists(path):
        tmp = path + ".tmp"
        make(tmp)
        os.replace(tmp, path)
    return path


def stamp(path):
    st = os.stat(path)
    return hashlib.sha256(("%s %d %d" % (path, st.st_size, st.st_mtime_ns)).encode()).hexdigest()[
        :12
    ]


def bundle_for(image, key, workdir, base=None):
    """The image's format-2 bundle, packed with front frames for `base` (the release the
    pair starts from: `bundle create --delta-base`) when given."""
    from agent.bundle.chunked import WINDOW
    from agent.bundle.writer import PayloadSource, create_bundle
    from agent.core import chunkindex
    from tests.bundle.factory import HW, MODEL

    # a new index layout, window or base packs again
    magic = chunkindex.MAGIC if base else chunkindex.MAGIC3
    tag = "%s-w%d" % (magic[:6].decode(), WINDOW >> 10)
    if base:
        tag += "-for-%s-%s" % (os.path.basename(base), stamp(base))
    out = os.path.join(delta_images.ROOT, "bundles", "%s-%s-%s.cub" % (
        os.path.basename(image), stamp(image), tag))  # fmt: skip
    os.makedirs(os.path.dirname(out), exist_ok=True)

    def make(tmp):
        create_bundle(
            tmp, [PayloadSource("rootfs", "rootfs", image, "zstd-chunks",
                                bases=[base] if base else [])], [key],
            version="2.0.0", security_version=1,
            compatible=[{"model": MODEL, "hardware_revisions": [HW]}],
            expires=int(time.time()) + 365 * 86400,
        )  # fmt: skip

    return cached(out, make)


def xdelta3_bytes(old, new):
    out = os.path.join(delta_images.ROOT, "peers", "%s-%s.xd3" % (stamp(old), stamp(new)))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cached(out, lambda tmp: subprocess.run(["xdelta3", "-e", "-9", "-f", "-s", old, new, tmp],
                                           check=True))  # fmt: skip
    return os.path.getsize(out)


def zck_file(image):
    out = os.path.join(delta_images.ROOT, "peers", "%s.zck" % stamp(image))
    return cached(out, lambda tmp: subprocess.run(["zck", "-o", tmp, image], check=True,
                                                  stdout=subprocess.DEVNULL))  # fmt: skip


def zchunk_bytes(old, new):
    out = subprocess.run(["zck_delta_size", zck_file(old), zck_file(new)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return int(re.search(r"Would download (\d+) of", out).group(1))


def casync_store(image):
    base = os.path.join(delta_images.ROOT, "peers", "casync-%s" % stamp(image))
    if not os.path.exists(base + ".caibx"):
        shutil.rmtree(base + ".castr", ignore_errors=True)
        subprocess.run(["casync", "make", "--store=" + base + ".castr", base + ".tmp.caibx",
                        image], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        os.replace(base + ".tmp.caibx", base + ".caibx")
    chunks = {}
    for dirpath, _dirs, files in os.walk(base + ".castr"):
        for name in files:
            chunks[name] = os.path.getsize(os.path.join(dirpath, name))
    return base + ".caibx", chunks


def casync_bytes(old, new):
    _, have = casync_store(old)
    index, chunks = casync_store(new)
    return os.path.getsize(index) + sum(n for name, n in chunks.items() if name not in have)


def bench_key():
    """The bench's release key, kept with the cached bundles it signed."""
    from agent.trust import crypto

    name = os.path.join(delta_images.ROOT, "release")
    if not os.path.exists(name + ".key"):
        os.makedirs(delta_images.ROOT, exist_ok=True)
        crypto.save_keypair(crypto.generate("ed25519"), name)
    return crypto.load_private(name + ".key")


def make_board(workdir, base_image, root, delta):
    from tests.bundle.factory import HW, MODEL

    board = os.path.join(workdir, "board-%s" % ("delta" if delta else "full"))
    if not os.path.exists(board):
        os.makedirs(board)
        shutil.copyfile(base_image, os.path.join(board, "slotA.img"))
        with open(os.path.join(board, "agent.toml"), "w") as f:
            f.write(BOARD % {"model": MODEL, "hw": HW, "root": root,
                             "delta": "true" if delta else "false"})  # fmt: skip
    with open(os.path.join(board, "boot-env.json"), "w") as f:
        f.write('{"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"}')
    shutil.rmtree(os.path.join(board, "state"), ignore_errors=True)  # a fresh board each time
    open(os.path.join(board, "slotB.img"), "wb").close()  # an empty inactive slot
    return os.path.join(board, "agent.toml")


def install_once(url, config_path):
    from agent import config
    from agent.transfer.installer import install
    from agent.trust.store import Trust
    from bootloader_iface import open_from_config

    cfg = config.load(config_path)
    os.sync()
    start = time.perf_counter()
    install(url, cfg, open_from_config(cfg), Trust.from_config(cfg))
    return time.perf_counter() - start


def measure_pair(name, base, new, key, root, workdir, repeat, log):
    from hil.services.faultproxy import FaultProxy
    from hil.services.httpserver import FileServer

    bundle = bundle_for(new, key, workdir, base=base)
    base_bundle = bundle_for(base, key, workdir)  # what the fleet's dry run estimates from
    row = {"pair": name, "full": os.path.getsize(bundle)}
    log("%s: xdelta3, zchunk, casync" % name)
    row["xdelta3"] = xdelta3_bytes(base, new)
    row["zchunk"] = zchunk_bytes(base, new)
    row["casync"] = casync_bytes(base, new)
    server = FileServer({"b.cub": bundle, "base.cub": base_bundle}).start()
    proxy = FaultProxy("127.0.0.1", server.server_address[1], rate=RATE).start()
    boards = dict((d, make_board(workdir, base, root, d)) for d in (True, False))
    times = {}
    try:
        links = [("unlimited", server.url("b.cub"), repeat),
                 ("2MB/s", "http://127.0.0.1:%d/b.cub" % proxy.port, 1)]  # fmt: skip
        for link, url, rounds in links:
            for n in range(rounds):
                for delta in (True, False) if n % 2 == 0 else (False, True):
                    make_board(workdir, base, root, delta)
                    before, asked = server.body_bytes, len(server.requests)
                    seconds = install_once(url, boards[delta])
                    key_ = (link, delta)
                    times.setdefault(key_, []).append(seconds)
                    if delta:
                        row["adaptive"] = server.body_bytes - before
                        row["requests"] = len(server.requests) - asked
                    log("%s %s %s install: %.2f s, %d bytes in %d requests" % (
                        name, link, "delta" if delta else "full", seconds,
                        server.body_bytes - before, len(server.requests) - asked))  # fmt: skip
        # What `charger-fleet rollout plan` says such a charger downloads (fleet/delta.py),
        # from the base's bundle: after the installs, so its own requests are not theirs.
        from fleet import delta as fleet_delta

        got = fleet_delta.estimate(server.url("b.cub"), server.url("base.cub"), root)
        row["fleet"] = got["download_bytes"]
        log("%s fleet plan estimate: %d bytes" % (name, row["fleet"]))
    finally:
        proxy.stop()
        server.stop()
    row["times"] = dict((k, min(v)) for k, v in times.items())
    return row


def table(rows):
    lines = ["%-6s %10s %10s %10s %10s %11s %8s %8s %9s %9s %9s %9s" % (
        "pair", "adaptive", "xdelta3", "zchunk", "casync", "full", "ad/xd3", "ad/zck",
        "dl s", "full s", "dl 2MB/s", "full 2MB/s")]  # fmt: skip
    lines.append("-" * len(lines[0]))
    for r in rows:
        t = r["times"]
        lines.append("%-6s %10d %10d %10d %10d %11d %8.2f %8.2f %9.2f %9.2f %9.1f %9.1f" % (
            r["pair"], r["adaptive"], r["xdelta3"], r["zchunk"], r["casync"], r["full"],
            r["adaptive"] / r["xdelta3"], r["adaptive"] / r["zchunk"],
            t[("unlimited", True)], t[("unlimited", False)], t[("2MB/s", True)],
            t[("2MB/s", False)]))  # fmt: skip
    return "\n".join(lines)


def verdict(rows):
    notes = []
    for r in rows:
        t = r["times"]
        target = TARGETS.get(r["pair"], 1.5)
        ratio = r["adaptive"] / float(r["xdelta3"])
        notes.append("%s: adaptive/xdelta3 %.2f (target <= %.2f: %s); adaptive/zchunk %.2f "
                     "(target <= 0.5: %s)" % (r["pair"], ratio, target,
                     "meets" if ratio <= target else "MISSES", r["adaptive"] / r["zchunk"],
                     "meets" if r["adaptive"] <= r["zchunk"] / 2 else "MISSES"))  # fmt: skip
        notes.append("%s: the fleet's dry run (rollout plan) estimates %d bytes, %.3fx what the "
                     "delta install downloaded (meant: at least it)" % (r["pair"], r["fleet"],
                     r["fleet"] / float(r["adaptive"])))  # fmt: skip
        speed = t[("unlimited", False)] / t[("unlimited", True)]
        notes.append("%s: unlimited link, full/delta install seconds %.2f (target >= 1: %s); "
                     "2 MB/s link %.1fx faster" % (r["pair"], speed,
                     "meets" if speed >= 1 else "MISSES",
                     t[("2MB/s", False)] / t[("2MB/s", True)]))  # fmt: skip
    return "\n".join(notes)


def ensure_tools():
    missing = [pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)
               and not os.path.exists("/usr/sbin/" + tool)]  # fmt: skip
    if missing:
        sys.exit("missing tools: %s (make bench-delta installs them)" % " ".join(missing))


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tests.bench_delta", description=__doc__.split("\n")[0]
    )
    p.add_argument("--pairs", default="minor,major", help="releases to compare with base")
    p.add_argument("--repeat", type=int, default=2, help="rounds on the unlimited link")
    p.add_argument("--dir", help="where boards go (default: a temp dir)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    ensure_tools()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    from tests.bundle.factory import make_root

    pairs = args.pairs.split(",")
    images = delta_images.images(["base"] + pairs, log)
    workdir = tempfile.mkdtemp(prefix="charger-bench-delta-", dir=args.dir)
    try:
        key = bench_key()
        root = os.path.join(workdir, "root.json")
        make_root(root, release_keys=[key])
        rows = [measure_pair(n, images["base"], images[n], key, root, workdir, args.repeat, log)
                for n in pairs]  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    print("bytes downloaded; seconds of one install (best of its rounds), delta (dl) and full; "
          "the machine is shared with other work, so times move with its load")  # fmt: skip
    print(verdict(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
