"""Resets for a split heap: when the journey cannot be read back after a parked step (or a
failed action), or a step cannot park, the heap is split rather than full (at 96K-100K,
30-35 KiB free and no 600 bytes in one piece after a step), and only a reset makes it whole.

`reset` keeps on flash (`heap-reset.json` in the state dir) the step's outcome (event, info;
None: the journal resumes the step as after a power cut), the state and job it ran in, and
writes what arrived meanwhile to the inbox file; then the board resets. Every later boot of
that job, until its end removes the record (Agent.do_cleanup), resumes the journey before
the connection, while the heap is young: `after` says so, `outcome` hands the journey the
step's result once, and `hold` keeps the journey's last action, if it needs the connection
(a step, the trial, the reboot), for the first turn after it, with the journey parked at once
where that action would park it.

Invariant: a reset for the heap happens only before the slot switch (or idle), so it never
costs the new slot a trial boot; at most `[install] heap_resets` (default 3) in a row at one
state of one job, then the agent recovers as before (reports no-memory, resumes later).
This module is imported only when needed: a board that never meets a split heap keeps its
code off the heap.
"""

from agent.core.lifecycle import (
    DOWNLOAD_SCHEDULED,
    DOWNLOADED,
    DOWNLOADING,
    IDLE,
    INSTALL_SCHEDULED,
    INSTALLED,
    INSTALLING,
    REBOOTING,
    SIGNATURE_VERIFIED,
    TRIAL,
)
from agent.mpy.jsonout import dumps
from agent.mpy.store import read_json, write_atomic

HEAP_RESETS = 3  # resets in a row at one state of one job ([install] heap_resets; 0: none)
BEFORE_SWITCH = (IDLE, DOWNLOAD_SCHEDULED, DOWNLOADING, DOWNLOADED, SIGNATURE_VERIFIED,
                 INSTALL_SCHEDULED, INSTALLING)  # fmt: skip
RESUMED_EARLY = BEFORE_SWITCH[1:] + (INSTALLED, REBOOTING, TRIAL)  # the job's later boots
HELD = ("download", "verify", "install", "run_checks", "reboot")  # need the connection


def reset(agent, state, job, outcome, inbox):
    """Reset the board with the step's outcome kept (see above); False where it does not."""
    if state not in BEFORE_SWITCH:
        return False
    limit = int(agent.cfg.get("install", {}).get("heap_resets", HEAP_RESETS))
    job_id = job.id if job is not None else None
    path = agent.heap_reset_path
    try:
        last = read_json(path) or {}
        count = 1
        if last.get("state") == state and last.get("job_id") == job_id:
            count = int(last.get("count", 0)) + 1
        if count > limit:
            return False
        for kind, payload in inbox:  # the inbox file keeps their order (take_deferred)
            with open(agent.inbox_path, "a") as f:
                f.write(kind + " " + dumps(payload) + "\n")
        write_atomic(path, {"state": state, "job_id": job_id, "count": count,
                            "outcome": list(outcome) if outcome else None})  # fmt: skip
    except Exception as e:  # the flash or the heap: recover() as before
        print("no reset for the heap (%r)" % e)
        return False
    print("heap too split for the journey in %s: reset %d of %d, %s kept" % (
        state, count, limit, outcome[0] if outcome else "no outcome"))  # fmt: skip
    agent.channel.stop()
    agent.running = False
    agent.system.reboot()
    return True


def after(agent):
    """Whether this boot follows a reset for the heap in the job the journal holds, up to
    its trial (the record goes with the job's end)."""
    try:
        last = read_json(agent.heap_reset_path) or {}
        record = read_json(agent.journal.path) or {}
    except Exception as e:  # resume() at the usual place says what is wrong
        print("heap reset record unreadable (%r)" % e)
        return False
    job = record.get("job") or {}
    return record.get("state") in RESUMED_EARLY and job.get("id") == last.get("job_id")


def outcome(agent):
    """The outcome kept for the journey as the journal holds it, once: (event, info), or
    None (none kept, or for another state or job: the journal moved on, and resumes as
    after a power cut)."""
    last = read_json(agent.heap_reset_path) or {}
    journey = agent.journey
    if (not last.get("outcome") or last.get("state") != journey.state or journey.job is None
            or last.get("job_id") != journey.job.id):  # fmt: skip
        return None
    event, info = last["outcome"]
    last["outcome"] = None  # taken: a cut from here resumes as after any other
    write_atomic(agent.heap_reset_path, last)
    return event, info


def hold(agent, action):
    """Keep the journey's last action at boot for the connection (True), if it needs it: a
    step or the trial with the journey parked now, while the heap is young, as they would
    park it; a reboot, so the statuses before it reach the broker first."""
    if action[0] not in HELD:
        return False
    if agent.parking and action[0] in ("download", "verify", "install"):
        from agent.mpy import park

        park.park(agent)
    elif agent.parking and action[0] == "run_checks":
        from agent.mpy import park

        park.park(agent, trial=True)
    agent.held = action
    return True
