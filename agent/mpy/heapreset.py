"""Resets for a split heap: when the journey cannot be read back (after a parked step or the
trial's checks, at boot, after a failed action), a step cannot park, or an action fails
even after a collection, the heap is split rather than full (at 96K-100K, 30-35 KiB free
and no 600 bytes in one piece after a step), and only a reset makes it whole.

Agent.heap_reset keeps on flash (`heap-reset.json` in the state dir) the step's outcome
(event, info; None: the journal resumes the step as after a power cut), the state and job it
ran in, and writes what arrived meanwhile to the inbox file; then the board resets (that
part stays in agent.py: at the moment it is needed, importing this module failed for want
of heap). With a soft reset (MicroPython's machine.soft_reset(): the VM and its heap start
again, the chip and its bootloader do not) that is also possible after the slot switch, as
in the trial, whose
read-back after the checks failed at 98K-100K in every run: the new slot's boot goes on,
still unconfirmed, and the next VM hands the journey the checks' results (CHECK_RESULTS).

Every later boot (or VM) of that job up to the new slot's first boot, and any VM that a
soft reset started in the journal's state (the record goes with the job's end,
Agent.do_cleanup), resumes the journey before the connection, while the heap is young:
`after` says so, `outcome` hands the journey the step's result once (a VM that resets
again before taking it passes it on: Agent.heap_reset), and `hold` keeps the
journey's last actions, if they need the connection or not the journey (a step or the
trial, with the journey parked at once; arming the slot and the reboot), for the first turn
after it.

Invariant: a hard reset for the heap happens only before the slot switch (or idle), so it
never costs the new slot a trial boot; a soft one may come in any state, as it resets no
chip; at most `[install] heap_resets` (default 3) in a row at one state of one job, then
the agent recovers as before (reports no-memory, resumes later), except in the new slot's
trial boot, which only the journey can end: that boot is ended by a reset, once per install
and never for a confirmed slot, so the bootloader rolls it back (end_trial_boot(); the
trial boot is spent either way then). This module is imported
only at such a boot: a board that never meets a split heap keeps its code off the heap.
"""

from agent.core.lifecycle import (
    DOWNLOAD_SCHEDULED,
    DOWNLOADED,
    DOWNLOADING,
    INSTALL_SCHEDULED,
    INSTALLED,
    INSTALLING,
    REBOOTING,
    SIGNATURE_VERIFIED,
    TRIAL,
)
from agent.mpy.store import read_json, write_atomic

# Up to the new slot's first boot (REBOOTING): its trial is held, parked at once (hold()).
RESUMED_EARLY = (DOWNLOAD_SCHEDULED, DOWNLOADING, DOWNLOADED, SIGNATURE_VERIFIED,
                 INSTALL_SCHEDULED, INSTALLING, INSTALLED, REBOOTING)  # fmt: skip
# The new slot's trial boot: armed, booted, never confirmed (end_trial_boot()).
UNCONFIRMED = (INSTALLED, REBOOTING, TRIAL)
HELD = ("download", "verify", "install", "run_checks", "try_slot", "reboot")  # see hold()
FREE = HELD + ("save_journal", "report")  # what may follow them in a hold


def after(agent):
    """Whether this boot follows a reset for the heap in the job the journal holds, up to
    its trial, or in its trial with the checks' results kept (the record goes with the
    job's end)."""
    try:
        last = read_json(agent.heap_reset_path) or {}
        record = read_json(agent.journal.path) or {}
    except Exception as e:  # resume() at the usual place says what is wrong
        print("heap reset record unreadable (%r)" % e)
        return False
    job = record.get("job") or {}
    if job.get("id") != last.get("job_id"):
        return False
    state = record.get("state")
    return state in RESUMED_EARLY or state == last.get("state")  # the latter: a soft reset


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


def hold(agent, actions):
    """Keep the journey's last actions at boot for the connection (True), if they start
    with one that needs it (a step, the trial, arming the new slot, the reboot) and none
    needs the journey itself but the trial: a step with the journey parked now, while the
    heap is young, as it would park it; set_boot() later, with the journey parked, and the
    statuses before the reboot reach the broker first; the trial (on the new slot's first
    boot) also with the journey parked now, as its checks run (at 98K the connection left
    no room for the journey on that boot). A journal save among them writes the record as
    it is now (the journey changes no more before they run)."""
    if actions[0][0] not in HELD or any(action[0] not in FREE for action in actions):
        return False
    journey = agent.journey
    held = [("save_record", journey.to_record(), journey.state)
            if action[0] == "save_journal" else action for action in actions]  # fmt: skip
    del journey
    first = actions[0][0]
    if agent.parking and first in ("download", "verify", "install", "run_checks"):
        from agent.mpy import park

        park.park(agent, trial=first == "run_checks")
    agent.held = held
    return True


def end_trial_boot(agent, state, job_id, new_slot):
    """The new slot's trial boot, whose journey no VM could read back in [install]
    heap_resets soft resets in a row: a reset, so ESP-IDF's bootloader rolls the slot,
    never confirmed, back, and the old slot's boot reports RolledBack. Without it the
    board stays in its trial for good: only the journey can end a trial (at 96K on
    this port, before the resident heap was trimmed by 192 bytes, every VM after the
    checks failed at 368 bytes in 3 runs of 5). First the resets' record
    goes, the checks' results with it (the old slot's boot must not take them for its
    own), and the install's boot attempts are spent (every boot of that slot would meet
    the same heap; the journey would arm it again otherwise). Never for a slot the trial
    confirmed already (mark_good ran, its journal save did not: the bootloader would boot
    it again), nor twice in one install (more attempts spent than the install has: no
    reset loop). False (recover() as before) in any other case; it never raises: it runs
    inside recover(), with the heap exhausted (lifecycle is imported only to report).
    Agent.restart_for() calls it once the resets are spent, at a boot after them, where
    this module is loaded already."""
    if getattr(agent.system, "soft_reset", None) is None or state not in UNCONFIRMED:
        return False
    try:
        from agent.mpy.agent import TRIAL_ATTEMPTS, heap_resets

        if not new_slot or agent.boot.booted_slot() != new_slot:
            return False
        last = read_json(agent.heap_reset_path) or {}
        if last.get("state") != state or last.get("job_id") != job_id:
            return False
        if int(last.get("count", 0)) < heap_resets(agent.cfg):
            return False
        attempts = int(agent.cfg.get("trial", {}).get("attempts", TRIAL_ATTEMPTS))
        slot = agent.board.slots()["slots"].get(new_slot, {})
        if slot.get("state") == "good" or slot.get("armed", 0) > attempts:
            return False
        import os

        os.remove(agent.heap_reset_path)
        agent.board.armed(new_slot, attempts + 1)  # past them: this install's mark
    except Exception as e:  # the flash or the heap: recover() as before
        print("trial boot not ended (%r)" % e)
        return False
    try:
        detail = ("no VM could read the trial's journey back; a reset, and the "
                  "bootloader rolls %s back" % new_slot)  # fmt: skip
        print(detail)
        from agent.core.lifecycle import status_of

        agent.report(status_of(state), {"job_id": job_id, "reason": "no-memory",
                                       "detail": detail})  # fmt: skip
    except Exception as e:  # the reset matters more than its report
        print("could not report the reset: %r" % e)
    return agent.reset_now(agent.system.reboot)
