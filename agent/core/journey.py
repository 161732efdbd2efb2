"""The journey driver: events in, new state and a list of actions out; it does no I/O itself.

Invariants: every state change goes through lifecycle.next_state; the journal holds the
current state before every action that changes the board (install, mark_bad, reboot). Two
actions run just before the save of the state they lead to, because resuming the previous
state settles either outcome by the booted slot: try_slot (journal still INSTALLED, or
REBOOTING/TRIAL when a trial the boot env lost is armed again) and
mark_good (journal still TRIAL: a power cut before the save only reruns the trial). A job
id is remembered when the job is accepted, in the same journal write, so it is never installed
twice; a slot that failed or was half written is marked bad before the journey moves on.

Actions are tuples the daemon executes in order:
  ("save_journal",)                  persist journey.to_record() atomically
  ("report", status, info)           publish a status (info: job_id, version, reason, ...)
  ("download",) ("verify",) ("install", slot) ("run_checks",) ("record_baseline",)
  ("try_slot", slot) ("mark_good", slot) ("mark_bad", slot) ("reboot",) ("cleanup",)
  ("flash_components", slot)         write slot's MCU images before its trial checks
  ("confirm_components", slot)       the commit: every MCU keeps what it runs
  ("restore_components", slot)       the rollback: every MCU back to slot's release
  ("wait", until_epoch, why)         nothing to do before then (or before news)
  ("ignore", job_id, reason)         duplicate/replayed job or stray cancel: log only
  ("reject", job_id, reason)         tell the operator the job was refused
  ("block_sessions",) ("release_sessions",)   connectors refuse / take new charging
                                     sessions again (only jobs with block_new_sessions)
The daemon feeds back result events with `handle` and clock ticks with `tick`.

Runs on MicroPython: plain classes, tuples and dicts, no reliance on dict order.
"""

from agent.core import lifecycle as lc
from agent.core import resets, schedule
from agent.core.errors import BootEnvError
from agent.core.jobs import JobMemory, job_from_dict
from agent.core.resets import (  # noqa: F401 - the rollback reasons, as the journey reports them
    FELL_BACK_IN_TRIAL,
    NEVER_CAME_UP,
    USED_UP_BY_POWER_LOSS,
    USED_UP_BY_RESETS,
)
from agent.core.trial import FAILED, PASSED, ROLLBACK, TrialPolicy

RECORD_FORMAT = 1
DEFAULT_CHECKS = ("alarms", "charging-session", "communication")
# Why a journey failed, in its final status.
REPORTED = ("reason", "detail", "check", "evidence", "cause")
ENV_LOST = "the boot environment lost the trial (new slot has attempts left); trying again"
ENV_LOSSES = 2  # times a lost trial is tried again before the journey gives up
WAIT_ALLOW = "installation-allowed"  # a hold_until_allowed job waits for allow()


def backoff_s(attempt):
    """Seconds before retry number `attempt` (1, 2, ...): 60 s doubling, capped at an hour."""
    return min(60 * (2 ** (attempt - 1)), 3600)


class Journey:
    """The agent's one update journey: the current job, its state and what it has learned."""

    def __init__(self, memory=None, trial_policy=None):
        self.memory = memory if memory is not None else JobMemory()
        self.trial_policy = trial_policy or TrialPolicy(600, DEFAULT_CHECKS)
        self.job = None
        self.state = lc.IDLE
        self.data = {}
        self.trace = [lc.IDLE]

    # --- persistence ---------------------------------------------------------------------

    def to_record(self):
        return {
            "format": RECORD_FORMAT,
            "state": self.state,
            "job": self.job.to_dict() if self.job is not None else None,
            "data": self.data,
            "memory": self.memory.to_list(),
        }

    @classmethod
    def from_record(cls, record, trial_policy=None):
        """The journey saved in `record`; ValueError/MalformedJob when it does not hold one."""
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise ValueError("journal record has an unknown format")
        state = record.get("state")
        if state not in lc.STATES:
            raise ValueError("journal record has an unknown state %r" % (state,))
        data = record.get("data")
        if not isinstance(data, dict):
            raise ValueError("journal record has no data object")
        j = cls(JobMemory.from_list(record.get("memory") or []), trial_policy)
        if record.get("job") is not None:
            j.job = job_from_dict(record["job"])
        elif state != lc.IDLE:
            raise ValueError("journal record in state %r has no job" % (state,))
        j.state = state
        j.data = data
        j.trace = [state]
        return j

    # --- inputs --------------------------------------------------------------------------

    def offer(self, job, now, booted_slot, inactive_slot, rng_value):
        """A new job from the control plane; rng_value in [0, 1) fixes its jitter for good."""
        if self.memory.seen(job.id):
            return self.state, [("ignore", job.id, "duplicate or replayed job id")]
        if self.state != lc.IDLE and not lc.is_terminal(self.state):
            busy = "busy with job %s (%s)" % (self.job.id, lc.status_of(self.state))
            return self.state, [("reject", job.id, busy)]
        actions = []
        if self.state != lc.IDLE:
            actions += self._go(lc.DONE, now)
        self.memory.remember(job.id)
        self.job = job
        self.data = {
            "old_slot": booted_slot,
            "new_slot": inactive_slot,
            "accepted_at": now,
            "rng": rng_value,
            "attempts": 0,
        }
        actions += self._go(lc.JOB_ACCEPTED, now)
        return self.state, actions

    def supersede(self, job, now, booted_slot, inactive_slot, rng_value):
        """A new job that replaces the running one while its slot switch has not happened
        (OCPP's AcceptedCanceled); with nothing running it is a plain offer. After the
        switch the new job is rejected and the running one carries on."""
        if self.job is None or self.state == lc.IDLE or lc.is_terminal(self.state):
            return self.offer(job, now, booted_slot, inactive_slot, rng_value)
        if self.memory.seen(job.id):
            return self.state, [("ignore", job.id, "duplicate or replayed job id")]
        if lc.SUPERSEDE not in lc.events_from(self.state):
            busy = "cannot replace job %s (%s): the slot switch has happened" % (
                self.job.id,
                lc.status_of(self.state),
            )
            return self.state, [("reject", job.id, busy)]
        info = {"reason": "cancelled", "evidence": "superseded by job %s" % job.id}
        actions = self._go(lc.SUPERSEDE, now, info)
        state, more = self.offer(job, now, booted_slot, inactive_slot, rng_value)
        return state, actions + more

    def allow(self, now):
        """The front-end allows installing and rebooting (hold_until_allowed jobs)."""
        if self.job is None or lc.is_terminal(self.state) or self.data.get("allowed"):
            return self.state, []
        self.data["allowed"] = True
        return self.state, [("save_journal",)]

    def cancel(self, job_id, now):
        if self.job is None or self.job.id != job_id or lc.is_terminal(self.state):
            return self.state, [("ignore", job_id, "no such job in progress")]
        if lc.CANCEL not in lc.events_from(self.state):
            return self.state, [("reject", job_id, "cannot cancel: installation has started")]
        return self._after(self._go(lc.CANCEL, now, {"reason": "cancelled"}))

    def handle(self, event, now, info=None):
        """A result event from an action (DOWNLOAD_OK, INSTALL_ERROR, ...).

        info: {"reason", "detail": str, "transient": bool, "check", "evidence"}. A transient
        download or install error with retries left becomes RETRY."""
        info = info or {}
        transient = info.get("transient") and self.job is not None
        if event in (lc.DOWNLOAD_ERROR, lc.INSTALL_ERROR) and transient:
            if self.data.get("attempts", 0) < self.job.retries:
                self.data["attempts"] = self.data.get("attempts", 0) + 1
                interval = self.job.retry_interval_s
                if interval is None:
                    interval = backoff_s(self.data["attempts"])
                self.data["retry_at"] = now + interval
                event = lc.RETRY
        return self._after(self._go(event, now, info))

    def set_baseline(self, baseline):
        """The alarm baseline measured for ("record_baseline",); saved with the journal."""
        self.data["baseline"] = baseline

    def tick(self, now, local_offset_s, session_active):
        """Move on when the schedule allows; otherwise a ("wait", until, why) action."""
        if self.state == lc.DOWNLOAD_SCHEDULED:
            return self._tick_download(now, session_active)
        if self.state in (lc.INSTALL_SCHEDULED, lc.INSTALLED):
            return self._tick_install(now, local_offset_s, session_active)
        if self.state == lc.TRIAL:
            return self.check_results(self.data.get("results") or {}, now)
        return self.state, []

    def check_results(self, results, now):
        """Results of ("run_checks",) so far: name -> (ok, evidence), ok None if pending."""
        if self.state != lc.TRIAL:
            raise lc.IllegalTransition(self.state, "check-results")
        self.data["results"] = results
        policy = self._policy()
        started = self.data["trial_started_at"]
        verdict, check, evidence = policy.verdict(results, now, started)
        if verdict == PASSED:
            return self._after(self._go(lc.CHECKS_PASSED, now))
        if verdict == FAILED:
            pending = (results.get(check) or (None,))[0] is None
            event = lc.WINDOW_EXPIRED if pending else lc.CHECKS_FAILED
            info = {"reason": "trial failed", "check": check, "evidence": evidence,
                    "cause": resets.CHECK_FAILED}  # fmt: skip
            return self._after(self._go(event, now, info))
        return self.state, [("wait", started + policy.window_s, "trial")]

    def regression(self, now, finding, decision):
        """A finding of the observation period after commit (see trial.Observation)."""
        if self.state != lc.COMMITTED or finding is None:
            return self.state, []
        info = {"reason": "regression", "check": finding["kind"], "evidence": finding["evidence"],
                "cause": resets.REGRESSION}  # fmt: skip
        if decision == ROLLBACK:
            return self._after(self._go(lc.CHECKS_FAILED, now, info))
        return self.state, [("report", "Committed", self._info(info))]

    def finish(self, now):
        """Close a journey that has ended (terminal state) and return to IDLE."""
        if not lc.is_terminal(self.state):
            return self.state, []
        return self._after(self._go(lc.DONE, now))

    # --- after a power cut ---------------------------------------------------------------

    def resume(self, booted_slot, now, boot=None):
        """(state, actions) to continue the journey saved before a power cut or reboot.

        boot: the facts of this boot (agent/core/resets.py), {"reset": cause, "id": boot id,
        "attempts_left": attempts of the new slot}, any of them optional; None when there are
        none, as when the daemon picks its journey up again after a failed step. They settle a
        trial the board came back to: a power loss resumes it, a watchdog or panic fails it."""
        saved = self.state
        if saved == lc.IDLE:
            return saved, []
        reset = self._reset_of(boot)
        new, old = self.data.get("new_slot"), self.data.get("old_slot")
        if saved in (lc.INSTALLED, lc.REBOOTING, lc.TRIAL, lc.ROLLED_BACK, lc.COMMITTED):
            if booted_slot not in (new, old):
                raise BootEnvError(
                    "booted slot %r is neither the old (%r) nor the new (%r) slot"
                    % (booted_slot, old, new)
                )
        booted_new = booted_slot == new
        if saved in (lc.INSTALLED, lc.REBOOTING) and booted_new:
            self.state = lc.REBOOTING
            return self._after(self._go(lc.REBOOTED_INTO_NEW, now))
        if saved in (lc.REBOOTING, lc.TRIAL) and not booted_new:
            if self._env_lost(boot):
                evidence = {"attempts_left": boot["attempts_left"], "reset": reset}
                if saved == lc.TRIAL:  # a reset the trial rides out (ESP-IDF: every reset)
                    tried = self.data.get("trial_resets") or []
                    self.data["trial_resets"] = list(tried) + [reset]
                info = {"reason": ENV_LOST, "evidence": evidence}
                return self._after(self._go(lc.BOOT_ENV_LOST, now, info))
            tried = self.data.get("trial_resets") or []
            info = resets.fallback(saved == lc.REBOOTING, tried, reset)
            return self._after(self._go(lc.REBOOTED_INTO_OLD, now, info))
        if saved == lc.TRIAL:
            return self._resume_trial(now, reset)
        if saved == lc.ROLLED_BACK:
            if booted_new:  # the switch back had not happened yet
                return self.state, [("mark_bad", new), ("reboot",)]
            restore = ("restore_components", old)
            tail = [self._report(), ("cleanup",)]
            return self.state, [("mark_bad", new), restore] + self._release() + tail
        if saved == lc.COMMITTED:
            good = [("confirm_components", new), ("mark_good", new)] if booted_new else []
            return self.state, good + self._release() + [self._report()]
        if lc.is_terminal(saved):
            return self.state, self._enter_failure(saved)
        self.state = lc.resume_state(saved)
        self.trace.append(self.state)
        self.data["deferred"] = False
        actions = self._enter(self.state, now, resumed=True)
        if saved == lc.INSTALLING:  # the slot may be half written: invalidate it again
            actions.insert(1, ("mark_bad", new))
        return self.state, actions

    def _reset_of(self, boot):
        """The reset cause of this boot as the journey sees it (None: no facts given)."""
        if boot is None:
            return None
        boot_id = boot.get("id")
        same_boot = boot_id is not None and boot_id == self.data.get("boot_id")
        if boot_id is not None:
            self.data["boot_id"] = boot_id
        if boot.get("attempts_left") is not None:
            self.data["attempts_left"] = boot["attempts_left"]
        return resets.AGENT_RESTART if same_boot else resets.normalise(boot.get("reset"))

    def _env_lost(self, boot):
        """Back on the old slot although the new one still has boot attempts: the bootloader
        did not give up on it, its environment lost the trial (a single-copy env torn by a
        power cut comes back as defaults). Tried again at most ENV_LOSSES times."""
        left = (boot or {}).get("attempts_left")
        if not isinstance(left, int) or left <= 0:
            return False
        if self.data.get("env_losses", 0) >= ENV_LOSSES:
            return False
        self.data["env_losses"] = self.data.get("env_losses", 0) + 1
        return True

    def _resume_trial(self, now, reset):
        """Back on the new slot in TRIAL: an agent restart reruns the checks in the same window;
        a power loss (or a reset nobody can explain) starts checks and window again, within the
        bootloader's attempts; a watchdog or panic reset fails the trial at once."""
        self.data["results"] = {}
        # MCU images the new slot's release brings are written (again) before any check.
        checks = [("flash_components", self.data.get("new_slot")), ("run_checks",)]
        release = self._release()  # connectors blocked for the install are free again
        if reset is None or reset == resets.AGENT_RESTART:
            if reset is None:
                return self.state, release + [self._report()] + checks
            self.data["agent_restarts"] = self.data.get("agent_restarts", 0) + 1
            return self.state, release + [("save_journal",), self._report()] + checks
        seen = list(self.data.get("trial_resets") or []) + [reset]
        self.data["trial_resets"] = seen
        evidence = {"reset": reset, "resets": seen, "attempts_left": self.data.get("attempts_left")}
        if reset in resets.CRASHES:
            info = {"reason": "new slot reset by %s during the trial" % reset,
                    "cause": resets.CRASH, "evidence": evidence}  # fmt: skip
            return self._after(self._go(lc.CRASHED, now, info))
        why = "a power loss" if reset == resets.POWER_ON else "a reset (%s)" % reset
        info = {"reason": "trial resumed after %s" % why, "evidence": evidence}
        state, actions = self._after(self._go(lc.POWER_LOST, now, info))
        return state, release + actions

    # --- internals -----------------------------------------------------------------------

    def _after(self, actions):
        # The state is read after the actions were built: building them moves the state.
        return self.state, actions

    def _go(self, event, now, info=None):
        new_state = lc.next_state(self.state, event)
        if new_state == self.state:  # a self-loop: deferring, nothing new to record
            return self._stay(event, now, info or {})
        self.state = new_state
        self.trace.append(new_state)
        self.data["deferred"] = False
        if info:
            for key in REPORTED:
                self.data[key] = info.get(key)
        if event == lc.REBOOTED_INTO_OLD:
            self.data["fell_back"] = True
        actions = self._enter(new_state, now)
        if event == lc.BOOT_ENV_LOST:  # InstallRebooting again: say why
            actions = [self._report(info) if a[0] == "report" else a for a in actions]
        if new_state == lc.SIGNATURE_VERIFIED:
            actions += self._go(lc.DONE, now)
        return actions

    def _stay(self, event, now, info):
        if event == lc.BOOT_ENV_LOST:  # REBOOTING again: arm the new slot, reboot into it
            new = self.data.get("new_slot")
            return [("try_slot", new), ("save_journal",), self._report(info), ("reboot",)]
        if event == lc.POWER_LOST:  # the trial starts over: every check, a whole window
            self.data["trial_started_at"] = now
            self.data["results"] = {}
            new = self.data.get("new_slot")
            return [("save_journal",), self._report(info), ("flash_components", new),
                    ("run_checks",)]  # fmt: skip
        if event == lc.SESSION_ACTIVE and not self.data.get("deferred"):
            self.data["deferred"] = True
            report = self._report({"reason": "charging session active"})
            return [("save_journal",), report] + self._block()
        return []

    def _block(self):
        return [("block_sessions",)] if self.job is not None and self.job.block_new_sessions else []

    def _release(self):
        job = self.job
        return [("release_sessions",)] if job is not None and job.block_new_sessions else []

    def _enter(self, state, now, resumed=False):
        """The actions on entering `state`, in the order the daemon must run them."""
        new = self.data.get("new_slot")
        save, report = ("save_journal",), self._report()
        if state == lc.IDLE:
            self.job, self.data = None, {}
            return [save]
        if state == lc.DOWNLOAD_SCHEDULED:
            return [save, self._report_paused_or_scheduled(resumed)]
        if state == lc.DOWNLOADING:
            return [save, report, ("download",)]
        if state == lc.DOWNLOADED:
            return [save, report, ("verify",)]
        if state == lc.SIGNATURE_VERIFIED:
            return [report]
        if state == lc.INSTALL_SCHEDULED:
            # The status first, then the connectors: the CSMS learns why they went away.
            if self.data.get("retry_at") and not resumed:
                reason = self._report({"reason": self._retry_reason()})
                return [save, ("mark_bad", new), reason] + self._block()
            return [save, report] + self._block()
        if state == lc.INSTALLING:
            # Invalidate the inactive slot before the first byte is written (as rauc does):
            # it may still be marked good from an older release.
            self.data["slot_touched"] = True
            return [("record_baseline",), save, ("mark_bad", new), report, ("install", new)]
        if state == lc.INSTALLED:
            return [save, report]
        if state == lc.REBOOTING:
            return [("try_slot", new), save, report, ("reboot",)]
        if state == lc.TRIAL:
            self.data["trial_started_at"] = now
            self.data["results"] = {}
            return [save] + self._release() + [report, ("flash_components", new), ("run_checks",)]
        if state == lc.COMMITTED:
            self.data["committed_at"] = now
            good = [("confirm_components", new), ("mark_good", new), save]
            return good + self._release() + [report, ("cleanup",)]
        return self._enter_failure(state)

    def _enter_failure(self, state):
        new = self.data.get("new_slot")
        save, report, release = ("save_journal",), self._report(), self._release()
        if state == lc.ROLLED_BACK:
            if self.data.get("fell_back"):  # the bootloader already switched back
                restore = ("restore_components", self.data.get("old_slot"))
                return [save, ("mark_bad", new), restore] + release + [report, ("cleanup",)]
            # Reported once back on the old slot (resume), by the firmware that is running.
            return [save, ("mark_bad", new), ("reboot",)]
        touched = state == lc.CANCELLED and self.data.get("slot_touched")
        if touched or state in (
            lc.INSTALLATION_FAILED, lc.INSTALL_VERIFICATION_FAILED, lc.INVALID_SIGNATURE
        ):  # fmt: skip
            # The inactive slot may hold part of an image: never leave it bootable.
            return [save, ("mark_bad", new)] + release + [report, ("cleanup",)]
        return [save] + release + [report, ("cleanup",)]

    def _report_paused_or_scheduled(self, resumed):
        if self.data.get("retry_at") and not resumed:
            info = self._info({"reason": self._retry_reason()})
            return ("report", lc.DOWNLOAD_PAUSED, info)
        return self._report()

    def _retry_reason(self):
        return "retry %d of %d after: %s" % (
            self.data.get("attempts", 0),
            self.job.retries,
            self.data.get("reason", "transient error"),
        )

    def _report(self, extra=None):
        info = {}
        if lc.is_terminal(self.state) and self.state != lc.COMMITTED:
            for key in REPORTED:
                if self.data.get(key) is not None:
                    info[key] = self.data[key]
        if self.state == lc.COMMITTED and self.data.get("trial_resets"):
            info["resets"] = self.data["trial_resets"]  # the trial was interrupted, and how
        if extra:
            for key in extra:
                info[key] = extra[key]
        return ("report", lc.status_of(self.state), self._info(info))

    def _info(self, info):
        info["job_id"] = self.job.id if self.job is not None else None
        info["version"] = self.job.version if self.job is not None else None
        return info

    def policy(self):
        """The trial policy for the current job: the configured checks plus the job's own,
        its window or the configured one."""
        return self._policy()

    def _policy(self):
        job = self.job
        if job is None or (job.checks is None and job.trial_window_s is None):
            return self.trial_policy
        # A job's checks add to the configured ones, never replace them: a job must not be
        # able to switch off the OEM's checks and turn a failing trial into a commit.
        checks = list(self.trial_policy.required_checks)
        for name in job.checks or ():
            if name not in checks:
                checks.append(name)
        return TrialPolicy(job.trial_window_s or self.trial_policy.window_s, checks)

    def _tick_download(self, now, session_active):
        if now < (self.data.get("retry_at") or 0):
            return self.state, [("wait", self.data["retry_at"], "retry")]
        answer = schedule.decide(
            now, 0, self.job, False, self.data.get("rng"), schedule.DOWNLOAD,
            self.data.get("accepted_at") or 0,
        )  # fmt: skip
        if answer[0] == "go" and session_active and self.job.download_waits_for_sessions:
            answer = ("wait", now + schedule.SESSION_RECHECK_S, schedule.WAIT_SESSION)
        return self._apply(answer, now)

    def _tick_install(self, now, local_offset_s, session_active):
        if self.state == lc.INSTALL_SCHEDULED and now < (self.data.get("retry_at") or 0):
            return self.state, [("wait", self.data["retry_at"], "retry")]
        # Writing the inactive slot disturbs no session; for such jobs only the reboot waits.
        writing = self.state == lc.INSTALL_SCHEDULED and self.job.write_during_sessions
        if writing:
            session_active = False
        answer = schedule.decide(
            now, local_offset_s, self.job, session_active, self.data.get("rng")
        )
        if answer[0] == "expired" and self.state == lc.INSTALLED:
            # Installed already: the deadline no longer applies, only the session does.
            answer = ("wait", now + schedule.SESSION_RECHECK_S, schedule.WAIT_SESSION)
            if not session_active:
                answer = ("go",)
        held = self.job.hold_until_allowed and not self.data.get("allowed") and not writing
        if answer[0] == "go" and held:
            return self.state, [("wait", now + schedule.SESSION_RECHECK_S, WAIT_ALLOW)]
        return self._apply(answer, now)

    def _apply(self, answer, now):
        if answer[0] == "go":
            return self._after(self._go(lc.TIME_REACHED, now))
        if answer[0] == "expired":
            info = {"reason": "job deadline passed before it could run"}
            return self._after(self._go(lc.WINDOW_EXPIRED, now, info))
        actions = []
        if answer[2] == schedule.WAIT_SESSION:
            actions = self._go(lc.SESSION_ACTIVE, now)
        return self.state, actions + [("wait", answer[1], answer[2])]
