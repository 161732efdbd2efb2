"""Whole-process measurements for `make bench`: what a charger pays for `charger-update` as the
programs it ships, start-up included.

- `measured(cmd)` runs one command the way a user does and returns its wall seconds, CPU
  seconds and peak RSS. A tiny spawner (python -I -S, about 7 MiB) forks and execs the command
  and reads the child's rusage: Linux counts the pre-exec image into ru_maxrss, so spawning
  from this (larger) process would report our size, not the command's.
- `fixed_cost()`: `charger-update --help` and `charger-update install` of a 1 MiB bundle,
  alternated with the interpreter's own start-up and `dd` of the same bytes.
- `idle_daemon()`: `charger-update run` on a file-slot board against a real mosquitto, idle
  for a window: wake-ups (voluntary context switches of all its threads, from /proc), CPU and
  RSS, read from /proc at the window's two ends.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SPAWNER = """\
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
seconds = time.perf_counter() - start
sys.stderr.write('\\nMEASURED %.6f %d %.6f %d\\n' % (
    seconds, ru.ru_maxrss, ru.ru_utime + ru.ru_stime, os.waitstatus_to_exitcode(status)))
"""

HELP_TARGET_S = 0.08
INSTALL_1MIB_TARGET_S = 0.12
IDLE_WAKEUPS_TARGET = 1.0  # per second, on average
IDLE_CPU_TARGET = 0.02  # CPU seconds per minute
IDLE_RSS_TARGET_MIB = 30


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_VENV = os.path.join(ROOT, ".cache", "bench-venv")


DEV = False  # True: the development venv's console script (quick smoke runs, tests)


def shipped(name="charger-update"):
    """The console script as a charger runs it: from a regular (wheel) install of this tree
    into .cache/bench-venv, refreshed on every call. The development venv's editable install
    adds an import hook that costs tens of milliseconds at every start; a charger has none."""
    if DEV:
        return os.path.join(os.path.dirname(sys.executable), name)
    python = os.path.join(SHIPPED_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", SHIPPED_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", ROOT], check=True)
    else:
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", ROOT],
            check=True,
        )
    return os.path.join(SHIPPED_VENV, "bin", name)


def tool(name):
    """A system command by its full path."""
    return shutil.which(name) or name


def measured(cmd, env=None, cwd=None):
    """{"seconds", "maxrss_kib", "cpu"} of one run of `cmd` (a list; cmd[0] a path)."""
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SPAWNER] + list(cmd),
        env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = [x for x in out.stderr.splitlines() if x.startswith("MEASURED ")]
    if not line:
        raise RuntimeError("%s did not run: %s" % (cmd[0], out.stderr[-2000:]))
    seconds, rss, cpu, code = line[-1].split()[1:]
    if int(code) != 0:
        raise RuntimeError("%s exited %s: %s" % (" ".join(cmd), code, out.stderr[-2000:]))
    return {"seconds": float(seconds), "maxrss_kib": int(rss), "cpu": float(cpu)}


def spread(values):
    values = sorted(values)
    return statistics.median(values), values[0], values[-1]


# -- fixed cost -------------------------------------------------------------------------------


def fixed_cost(workdir, rounds=15):
    """Rows (name, median s, min, max, peak RSS MiB, target s or None) for the start-up bound
    commands, alternated round by round so a slow phase of the host hits each alike."""
    from tests.bench import make_bundle

    payload = os.path.join(workdir, "small.bin")
    with open(payload, "wb") as f:
        f.write(os.urandom(1 << 20))
    target = os.path.join(workdir, "small-slot.img")
    bundle, config_path = make_bundle(workdir, payload, target)
    cu = shipped()
    cases = [
        ("python -I -S -c pass", [sys.executable, "-I", "-S", "-c", "pass"], None),
        (
            "dd 1 MiB conv=fsync",
            [tool("dd"), "if=" + bundle, "of=" + target, "bs=1M", "conv=fsync", "status=none"],
            None,
        ),  # fmt: skip
        ("charger-update --help", [cu, "--help"], HELP_TARGET_S),
        (
            "charger-update install 1 MiB",
            [cu, "--config", config_path, "install", bundle],
            INSTALL_1MIB_TARGET_S,
        ),  # fmt: skip
    ]
    runs = dict((name, []) for name, _, _ in cases)
    for _ in range(rounds):
        for name, cmd, _ in cases:
            runs[name].append(measured(cmd, cwd=workdir))
    rows = []
    for name, _, target_s in cases:
        med, lo, hi = spread(r["seconds"] for r in runs[name])
        rss = max(r["maxrss_kib"] for r in runs[name]) / 1024.0
        rows.append((name, med, lo, hi, rss, target_s))
    return rows


def fixed_cost_table(rows):
    lines = ["%-30s %9s %17s %9s  %s" % ("fixed cost", "median s", "(min-max)", "peakRSS", "")]
    for name, med, lo, hi, rss, target_s in rows:
        verdict = ""
        if target_s is not None:
            verdict = "%s the %.2f s target" % ("meets" if med < target_s else "MISSES", target_s)
        lines.append(
            "%-30s %9.3f %17s %8.1fM  %s" % (name, med, "(%.3f-%.3f)" % (lo, hi), rss, verdict)
        )
    return "\n".join(lines)


# -- the idle daemon --------------------------------------------------------------------------

IDLE_BOARD = """
[mqtt]
host = "127.0.0.1"
port = %(port)d
prefix = "bench"
[charging_stack]
socket = "%(dir)s/stack.sock"
[system]
reboot_command = "true"
"""


def proc_sample(pid):
    """(voluntary context switches of all threads, CPU seconds, VmRSS KiB, RssAnon KiB,
    threads) of a live process."""
    switches = 0
    task_dir = "/proc/%d/task" % pid
    for tid in os.listdir(task_dir):
        try:
            with open(os.path.join(task_dir, tid, "status")) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        switches += int(line.split()[1])
        except OSError:
            pass  # a thread that ended between listdir and open
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    status = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()[0] if value.split() else ""
    return (
        switches,
        cpu,
        int(status["VmRSS"]),
        int(status.get("RssAnon", 0)),
        int(status["Threads"]),
    )


def idle_daemon(workdir, window_s=30.0, watchdog_s=30):
    """Figures of an idle `charger-update run`: (wakeups/s, CPU s/min, RSS MiB, anon MiB,
    threads). The agent runs as under systemd with WatchdogSec=`watchdog_s`."""
    from agent.frontends.backend_sim import BackendSim
    from hil.services.mosquitto import Mosquitto
    from tests.bundle.factory import make_root
    from tests.install.conftest import FileBoard

    board_dir = os.path.join(workdir, "idle-board")
    os.makedirs(board_dir)
    board = FileBoard(board_dir, make_root(board_dir))
    broker = Mosquitto(os.path.join(workdir, "broker")).start()
    proc = None
    try:
        with open(board.config_path, "a") as f:
            f.write(IDLE_BOARD % {"port": broker.port, "dir": board_dir})
        env = dict(os.environ, WATCHDOG_USEC=str(watchdog_s * 1000000))
        log = open(os.path.join(board_dir, "agent.log"), "wb")
        proc = subprocess.Popen(
            [shipped(), "--config", board.config_path, "run"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        with BackendSim(broker.settings(prefix="bench")) as backend:
            if not backend.wait_inventory("cp-0001", lambda p: True, 30):
                raise RuntimeError("the idle agent never came online; see %s" % log.name)
        time.sleep(2.0)  # a measuring interval: let start-up work finish before the window
        first = proc_sample(proc.pid)
        time.sleep(window_s)  # the measuring window itself
        last = proc_sample(proc.pid)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        broker.stop()
    wakeups = (last[0] - first[0]) / window_s
    cpu_per_min = (last[1] - first[1]) * 60.0 / window_s
    return wakeups, cpu_per_min, last[2] / 1024.0, last[3] / 1024.0, last[4]


def idle_table(figures, window_s):
    wakeups, cpu, rss, anon, threads = figures
    checks = (
        ("wake-ups/s", wakeups, IDLE_WAKEUPS_TARGET, "%.2f"),
        ("CPU s/min", cpu, IDLE_CPU_TARGET, "%.3f"),
        ("RSS MiB", rss, IDLE_RSS_TARGET_MIB, "%.1f"),
    )
    lines = ["idle `charger-update run` over %.0f s (%d threads, %.1f MiB anonymous):"
             % (window_s, threads, anon)]  # fmt: skip
    for name, value, target, fmt in checks:
        ok = "meets" if value <= target else "MISSES"
        lines.append("  %-11s %8s  %s the %s target" % (name, fmt % value, ok, fmt % target))
    return "\n".join(lines)


def main(argv=None):
    """`python -m tests.bench_process [--idle-s 30] [--rounds 15]`: both sections alone."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.bench_process", description=__doc__)
    p.add_argument("--idle-s", type=float, default=30.0, help="idle window (default 30 s)")
    p.add_argument("--rounds", type=int, default=15, help="fixed-cost rounds (default 15)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="charger-bench-")
    try:
        fixed = fixed_cost(workdir, args.rounds)
        idle = idle_daemon(workdir, args.idle_s)
    finally:
        subprocess.run(["rm", "-rf", workdir], check=False)
    if args.json:
        print(json.dumps({"fixed_cost": fixed, "idle": idle}))
    else:
        print(fixed_cost_table(fixed))
        print(idle_table(idle, args.idle_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
