"""A seeded, replayable power-cut soak on the virtual board (issue 18).

`python -m hil.soak --journeys N --seed S [--boards K]` runs N update journeys on virtual
boards (hil/rigs/virtual.toml): good releases alternating with the defective kinds the
virtual firmware offers, each journey with exactly one power cut, at a random instant after
the job, within 15 ms of the job's delivery (the broker has it; the agent is taking it in),
right after a given status of the job reached the backend, or right after the k-th journal
write; the board stays off 0.05-1 s. It prints where the cuts landed (the journal
state at the cut) against how the journeys ended, the time from job to final status (median,
max), and how long releases that crash or hang took to fall back (boots and seconds).

Invariant checked after every journey: it ended with a final status (good: Committed,
defective: RolledBack), the board came back on a slot with the agent running, it charges,
and its journal went back to idle. The seed fixes the plan (releases, cut kinds, instants,
off times); when processes reach each point still depends on the machine's load.
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time

from agent.core.lifecycle import FINAL_STATUSES
from agent.frontends import channel as ch

DEFECTS = ("refuse-session", "crash-on-boot", "no-backend", "alarm-storm", "hang-agent")
CUT_KINDS = ("time", "delivery", "status", "journal")
DELIVERY_S = 0.015  # a "delivery" cut lands this soon after the broker acknowledged the publish
DELIVERY_SHARE = 0.15  # of the cuts; the rest split evenly, most of them land later on
GOOD = "good"
# Statuses a journey of each kind reports before its final one (a "status" cut picks one).
BEFORE_TRIAL = ["DownloadScheduled", "Downloading", "Downloaded", "SignatureVerified",
                "InstallScheduled", "Installing", "Installed", "InstallRebooting"]  # fmt: skip
NEVER_UP = ("crash-on-boot", "hang-agent")
# Seconds from job to final status without a cut (measured here), for "time" cuts.
HORIZON_S = {GOOD: 4.0, "refuse-session": 5.0, "crash-on-boot": 3.0, "no-backend": 10.0,
             "alarm-storm": 5.0, "hang-agent": 9.0}  # fmt: skip
JOURNAL_WRITES = 8  # journal writes of a journey before its final state is saved
JOURNEY_TIMEOUT_S = 240
RIG = dict(trial_window_s=12, watchdog_s=6.0, agent_overrides={
    "trial": {"alarms": {"observe_s": 1}, "communication": {"timeout_s": 2}},
})  # fmt: skip
STATE_ORDER = ["idle", "download-scheduled", "downloading", "downloaded", "signature-verified",
               "install-scheduled", "installing", "installed", "rebooting", "trial",
               "committed", "rolled-back", "none"]  # fmt: skip


def make_plan(seed, journeys):
    """The journeys to run: release kind, cut kind, its trigger, off time. Same seed, same plan."""
    rng = random.Random(seed)
    plan = []
    for n in range(journeys):
        kind = GOOD if n % 2 == 0 else DEFECTS[(n // 2) % len(DEFECTS)]
        cut = "delivery" if rng.random() < DELIVERY_SHARE else rng.choice(("time", "status",
                                                                            "journal"))  # fmt: skip
        if cut == "time":
            at = round(rng.uniform(0.0, HORIZON_S[kind]), 3)
        elif cut == "delivery":
            at = round(rng.uniform(0.0, DELIVERY_S), 4)
        elif cut == "status":
            names = BEFORE_TRIAL + ([] if kind in NEVER_UP else ["TrialRunning"])
            at = rng.choice(names)
        else:
            at = rng.randint(1, JOURNAL_WRITES)
        off = round(rng.uniform(0.05, 1.0), 3)
        plan.append({"n": n, "kind": kind, "cut": cut, "at": at, "off_s": off})
    return plan


class JournalWatch:
    """Counts the agent's journal writes (each an atomic rename onto journal.json) as the
    kernel reports them (inotify), so a cut can follow the k-th write within a millisecond."""

    def __init__(self, data_dir):
        from inotify_simple import INotify, flags

        self.inotify = INotify()
        self.inotify.add_watch(data_dir, flags.MOVED_TO | flags.CLOSE_WRITE)
        self.writes = 0
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.closed:
            try:
                events = self.inotify.read(timeout=200)
            except (OSError, ValueError):  # closed under us: the soak is over
                return
            n = len([e for e in events if e.name == "journal.json"])
            if n:
                with self.cond:
                    self.writes += n
                    self.cond.notify_all()

    def wait(self, count, stop):
        """True once `count` writes happened; False when `stop` is set first."""
        with self.cond:
            while self.writes < count:
                if stop.is_set():
                    return False
                self.cond.wait(0.1)
            return True

    def close(self):
        self.closed = True
        self.inotify.close()


class Board:
    """One virtual rig, its journal watch and status clock, running its journeys in turn."""

    def __init__(self, workdir, index):
        from hil.virtual.rig import VirtualRig

        self.statuses = {}  # (job id, status) -> monotonic time the backend first saw it
        self.status_seen = threading.Condition()
        where = os.path.join(workdir, "board%d" % index)
        self.rig = VirtualRig(where, device_id="soak-%d" % index, on_status=self._on_status, **RIG)
        self.rig.start()
        self.rig.power_on()
        self.rig.wait_online(60)
        self.journal = JournalWatch(os.path.join(self.rig.board.dir, "data"))
        self.version = 0

    def _on_status(self, device, status):
        with self.status_seen:
            self.statuses.setdefault((status.get("job_id"), status.get("status")), time.monotonic())
            self.status_seen.notify_all()

    def close(self):
        self.journal.close()
        self.rig.close()

    def journal_state(self):
        try:
            with open(os.path.join(self.rig.board.dir, "data", "journal.json")) as f:
                return json.load(f).get("state")
        except (OSError, ValueError):
            return "none"

    def boots_of(self, slot, since_text):
        text = self.rig.console_text()[len(since_text) :]
        return text.count("[rom] booting slot %s" % slot)

    # -- one journey -------------------------------------------------------------------------

    def journey(self, step):
        rig = self.rig
        self.version += 1
        version = "1.%d.0" % self.version
        defects = () if step["kind"] == GOOD else (step["kind"],)
        url = rig.release(version, defects=defects)
        before = rig.inventory() or {}
        new_slot = [s for s in before.get("slots", {"A": 0, "B": 0}) if s != before.get("booted")]
        console = rig.console_text()
        done, cut = threading.Event(), {}
        writes = self.journal.writes
        started = time.monotonic()
        job = rig.push_job(version, url)
        cutter = threading.Thread(target=self._cut, args=(step, job["id"], writes, done, cut))
        cutter.start()
        try:
            final = rig.wait_status(job["id"], FINAL_STATUSES, JOURNEY_TIMEOUT_S)
        except TimeoutError:  # the job was lost (or the journey stuck): a finding, not a crash
            final = {"status": "none", "reason": "no final status in %ss" % JOURNEY_TIMEOUT_S}
        elapsed = time.monotonic() - started
        with self.status_seen:  # a cutter still waiting for its status learns it never comes
            done.set()
            self.status_seen.notify_all()
        cutter.join()
        result = dict(step, version=version, job=job["id"], final=final["status"])
        result.update(cause=final.get("cause"), reason=final.get("reason"), seconds=elapsed)
        result.update(state_at_cut=cut.get("state"), cut_after_final=cut.get("late", False))
        if final["status"] == "none":
            result["problems"] = [final["reason"]]
        else:
            result["problems"] = self._settle(job["id"], step, final, cut)
        if step["kind"] in NEVER_UP and new_slot:
            result["new_slot_boots"] = self.boots_of(new_slot[0], console)
            rebooting = self.statuses.get((job["id"], "InstallRebooting"))
            ended = self.statuses.get((job["id"], final["status"]))
            if rebooting and ended:
                result["fallback_s"] = round(ended - rebooting, 2)
        return result

    def _cut(self, step, job_id, writes, done, cut):
        """Wait for the plan's trigger, then cut the power for off_s and power on again."""
        if step["cut"] in ("time", "delivery"):
            fired = not done.wait(step["at"])
        elif step["cut"] == "status":
            with self.status_seen:
                fired = (
                    self.status_seen.wait_for(
                        lambda: (job_id, step["at"]) in self.statuses or done.is_set(),
                        JOURNEY_TIMEOUT_S,
                    )
                    and (job_id, step["at"]) in self.statuses
                )
        else:
            fired = self.journal.wait(writes + step["at"], done)
        cut["late"] = not fired  # the journey ended first: cut right after its final status
        self.rig.power_cut()
        cut["state"] = self.journal_state()
        time.sleep(step["off_s"])  # the supply stays off this long: the cut itself
        cut["on_at"] = time.time()
        self.rig.power_on()

    def _settle(self, job_id, step, final, cut):
        """What went wrong after the journey (an empty list when nothing did)."""
        problems = []
        expected = "Committed" if step["kind"] == GOOD else "RolledBack"
        if final["status"] != expected:
            problems.append("ended %s, expected %s (%s)" % (final["status"], expected,
                                                            final.get("reason")))  # fmt: skip
        backend, device = self.rig.backend, self.rig.device_id
        since = int(cut["on_at"])
        try:  # the agent is up again after the cut, has closed the journey and says so
            backend.wait_for(ch.ONLINE, device, lambda p: p.get("online") and p["ts"] >= since,
                             JOURNEY_TIMEOUT_S)  # fmt: skip
            row = backend.wait_inventory(
                device,
                lambda r: r["ts"] >= since and (r.get("last_job") or {}).get("id") == job_id,
                JOURNEY_TIMEOUT_S,
            )
            self._wait_idle()
        except Exception as e:  # noqa: BLE001 - a soak reports, it does not stop
            return problems + ["board did not settle: %s" % str(e)[:300]]
        if row["booted"] != row["primary"]:
            problems.append("booted %s but primary %s" % (row["booted"], row["primary"]))
        stack = self.rig.stack()
        started = stack.request("start", id_tag="SOAK-CHECK")
        stack.request("stop")
        if not started.get("ok"):
            problems.append("board cannot charge afterwards: %s" % started)
        return problems

    def _wait_idle(self, timeout=JOURNEY_TIMEOUT_S):
        """The journal is back to idle, not stuck mid-journey (waits on journal writes)."""
        deadline = time.monotonic() + timeout
        while self.journal_state() != "idle":
            if time.monotonic() > deadline:
                raise TimeoutError("journal stuck in %s" % self.journal_state())
            stop = threading.Event()
            timer = threading.Timer(1.0, stop.set)
            timer.start()
            self.journal.wait(self.journal.writes + 1, stop)  # the next write, or look again
            timer.cancel()


def run(journeys, seed, boards=1, workdir=None, out=sys.stdout):
    """Run the soak; returns (results, summary text). Each board runs its journeys in turn."""
    plan = make_plan(seed, journeys)
    workdir = workdir or tempfile.mkdtemp(prefix="charger-soak-")
    results, errors = [], []
    lock = threading.Lock()

    def worker(index):
        board = None
        try:
            board = Board(workdir, index)
            for step in plan[index::boards]:
                result = board.journey(step)
                with lock:
                    results.append(result)
                    out.write(line(result) + "\n")
                    out.flush()
        except Exception as e:  # noqa: BLE001
            errors.append("board %d: %r" % (index, e))
        finally:
            if board is not None:
                board.close()

    load = os.getloadavg()[0]
    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(boards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.sort(key=lambda r: r["n"])
    with open(os.path.join(workdir, "soak.json"), "w") as f:
        json.dump({"seed": seed, "journeys": journeys, "plan": plan, "results": results,
                   "errors": errors}, f, indent=1)  # fmt: skip
    summary = summarise(results, seed, journeys, boards, time.monotonic() - started, load)
    return results, errors, summary


def line(r):
    at = r["at"]
    if r["cut"] in ("time", "delivery"):
        at = "%.3fs" % r["at"]
    late = " (after final)" if r["cut_after_final"] else ""
    return "#%-3d %-14s cut %-7s %-18s state %-18s -> %-10s %-18s %5.1fs %s" % (
        r["n"], r["kind"], r["cut"], at, r["state_at_cut"], r["final"], r["cause"] or "",
        r["seconds"], ("; ".join(r["problems"]) or "ok") + late,
    )  # fmt: skip


def summarise(results, seed, journeys, boards, wall_s, load):
    out = ["", "soak: seed %d, %d journeys on %d board(s), %.0f s wall, load %.2f at start"
           % (seed, journeys, boards, wall_s, load)]  # fmt: skip
    for title, kinds in (("good releases", (GOOD,)), ("defective releases", DEFECTS)):
        rows = [r for r in results if r["kind"] in kinds]
        out += ["", "| last journal state at the cut | %s cut there | ended Committed "
                "| ended RolledBack |" % title, "|---|---|---|---|"]  # fmt: skip
        states = sorted(set(r["state_at_cut"] for r in rows), key=_state_key)
        for state in states:
            here = [r for r in rows if r["state_at_cut"] == state]
            out.append("| %s | %d | %d | %d |" % (
                state, len(here), sum(r["final"] == "Committed" for r in here),
                sum(r["final"] == "RolledBack" for r in here)))  # fmt: skip
        if rows:
            times = [r["seconds"] for r in rows]
            out.append("time from job to final status: median %.1f s, max %.1f s"
                       % (statistics.median(times), max(times)))  # fmt: skip
    kinds = [(k, len([r for r in results if r["cut"] == k])) for k in CUT_KINDS]
    late = len([r for r in results if r["cut_after_final"]])
    out += ["", "cuts: " + ", ".join("%s %d" % kv for kv in kinds)
            + " (%d landed after the final status)" % late]  # fmt: skip
    causes = {}
    for r in results:
        if r["final"] == "RolledBack":
            key = (r["kind"], r["cause"])
            causes[key] = causes.get(key, 0) + 1
    out += ["", "rollback causes: " + ", ".join(
        "%s %s x%d" % (k[0], k[1], v) for k, v in sorted(causes.items(), key=str))]  # fmt: skip
    for kind in NEVER_UP:
        rows = [r for r in results if r["kind"] == kind and "new_slot_boots" in r]
        if rows:
            out.append("%s: new slot booted at most %d time(s); InstallRebooting to RolledBack "
                       "at most %.1f s" % (kind, max(r["new_slot_boots"] for r in rows),
                                            max(r.get("fallback_s", 0) for r in rows)))  # fmt: skip
    bad = [r for r in results if r["problems"]]
    out.append("journeys with problems: %d of %d" % (len(bad), len(results)))
    return "\n".join(out)


def _state_key(state):
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hil.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--journeys", type=int, default=100, help="journeys to run (default 100)")
    p.add_argument("--seed", type=int, default=18, help="plan seed (default 18)")
    p.add_argument("--boards", type=int, default=2, help="virtual boards run in parallel")
    p.add_argument("--workdir", help="where boards, logs and soak.json go (default: a temp dir)")
    args = p.parse_args(argv)
    results, errors, summary = run(args.journeys, args.seed, args.boards, args.workdir)
    print(summary)
    for error in errors:
        print("error: %s" % error)
    return 1 if errors or any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
