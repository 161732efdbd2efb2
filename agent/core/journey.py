"""The journey driver: events in, new state and a list of actions out; it does no I/O itself.

Invariants: every state change goes through lifecycle.next_state; the journal holds the
current state before every action that changes the board (install, mark_bad, reboot). Two
actions run just before the save of the state they lead to, because resuming the previous
state settles either outcome by the booted slot: try_slot (journal still INSTALLED) and
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
The daemon feeds back result events with `handle` and clock ticks with `tick`.

Runs on MicroPython: plain classes, tuples and dicts, no reliance on dict order.
"""

from agent.core import lifecycle as lc
from agent.core import schedule
from agent.core.errors import BootEnvError
from agent.core.jobs import JobMemory, job_from_dict
from agent.core.trial import FAILED, PASSED, ROLLBACK, TrialPolicy

RECORD_FORMAT = 1
DEFAULT_CHECKS = ("alarms", "charging-session", "communication")
NEVER_CAME_UP = "new slot never came up"
FELL_BACK_IN_TRIAL = "new slot went down during the trial; the bootloader fell back"


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
                self.data["retry_at"] = now + backoff_s(self.data["attempts"])
                event = lc.RETRY
        return self._after(self._go(event, now, info))

    def set_baseline(self, baseline):
        """The alarm baseline measured for ("record_baseline",); saved with the journal."""
        self.data["baseline"] = baseline

    def tick(self, now, local_offset_s, session_active):
        """Move on when the schedule allows; otherwise a ("wait", until, why) action."""
        if self.state == lc.DOWNLOAD_SCHEDULED:
            return self._tick_download(now)
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
            info = {"reason": "trial failed", "check": check, "evidence": evidence}
            return self._after(self._go(event, now, info))
        return self.state, [("wait", started + policy.window_s, "trial")]

    def regression(self, now, finding, decision):
        """A finding of the observation period after commit (see trial.Observation)."""
        if self.state != lc.COMMITTED or finding is None:
            return self.state, []
        info = {"reason": "regression", "check": finding["kind"], "evidence": finding["evidence"]}
        if decision == ROLLBACK:
            return self._after(self._go(lc.CHECKS_FAILED, now, info))
        return self.state, [("report", "Committed", self._info(info))]

    def finish(self, now):
        """Close a journey that has ended (terminal state) and return to IDLE."""
        if not lc.is_terminal(self.state):
            return self.state, []
        return self._after(self._go(lc.DONE, now))

    # --- after a power cut ---------------------------------------------------------------

    def resume(self, booted_slot, now):
        """(state, actions) to continue the journey saved before a power cut or reboot."""
        saved = self.state
        if saved == lc.IDLE:
            return saved, []
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
            reason = NEVER_CAME_UP if saved == lc.REBOOTING else FELL_BACK_IN_TRIAL
            return self._after(self._go(lc.REBOOTED_INTO_OLD, now, {"reason": reason}))
        if saved == lc.TRIAL:
            self.data["results"] = {}  # checks run again; the window counts from the start
            return self.state, [self._report(), ("flash_components", new), ("run_checks",)]
        if saved == lc.ROLLED_BACK:
            if booted_new:  # the switch back had not happened yet
                return self.state, [("mark_bad", new), ("reboot",)]
            restore = ("restore_components", old)
            return self.state, [("mark_bad", new), restore, self._report(), ("cleanup",)]
        if saved == lc.COMMITTED:
            good = [("confirm_components", new), ("mark_good", new)] if booted_new else []
            return self.state, good + [self._report()]
        if lc.is_terminal(saved):
            return self.state, self._enter_failure(saved)
        self.state = lc.resume_state(saved)
        self.trace.append(self.state)
        self.data["deferred"] = False
        actions = self._enter(self.state, now, resumed=True)
        if saved == lc.INSTALLING:  # the slot may be half written: invalidate it again
            actions.insert(1, ("mark_bad", new))
        return self.state, actions

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
            for key in ("reason", "detail", "check", "evidence"):
                self.data[key] = info.get(key)
        if event == lc.REBOOTED_INTO_OLD:
            self.data["fell_back"] = True
        actions = self._enter(new_state, now)
        if new_state == lc.SIGNATURE_VERIFIED:
            actions += self._go(lc.DONE, now)
        return actions

    def _stay(self, event, now, info):
        if event == lc.SESSION_ACTIVE and not self.data.get("deferred"):
            self.data["deferred"] = True
            return [("save_journal",), self._report({"reason": "charging session active"})]
        return []

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
            if self.data.get("retry_at") and not resumed:
                return [save, ("mark_bad", new), self._report({"reason": self._retry_reason()})]
            return [save, report]
        if state == lc.INSTALLING:
            # Invalidate the inactive slot before the first byte is written (as rauc does):
            # it may still be marked good from an older release.
            return [("record_baseline",), save, ("mark_bad", new), report, ("install", new)]
        if state == lc.INSTALLED:
            return [save, report]
        if state == lc.REBOOTING:
            return [("try_slot", new), save, report, ("reboot",)]
        if state == lc.TRIAL:
            self.data["trial_started_at"] = now
            self.data["results"] = {}
            return [save, report, ("flash_components", new), ("run_checks",)]
        if state == lc.COMMITTED:
            self.data["committed_at"] = now
            return [("confirm_components", new), ("mark_good", new), save, report, ("cleanup",)]
        return self._enter_failure(state)

    def _enter_failure(self, state):
        new = self.data.get("new_slot")
        save, report = ("save_journal",), self._report()
        if state == lc.ROLLED_BACK:
            if self.data.get("fell_back"):  # the bootloader already switched back
                restore = ("restore_components", self.data.get("old_slot"))
                return [save, ("mark_bad", new), restore, report, ("cleanup",)]
            # Reported once back on the old slot (resume), by the firmware that is running.
            return [save, ("mark_bad", new), ("reboot",)]
        if state in (lc.INSTALLATION_FAILED, lc.INSTALL_VERIFICATION_FAILED, lc.INVALID_SIGNATURE):
            # The inactive slot may hold part of an image: never leave it bootable.
            return [save, ("mark_bad", new), report, ("cleanup",)]
        return [save, report, ("cleanup",)]

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
            for key in ("reason", "detail", "check", "evidence"):
                if self.data.get(key) is not None:
                    info[key] = self.data[key]
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

    def _tick_download(self, now):
        if now < (self.data.get("retry_at") or 0):
            return self.state, [("wait", self.data["retry_at"], "retry")]
        answer = schedule.decide(
            now, 0, self.job, False, self.data.get("rng"), schedule.DOWNLOAD,
            self.data.get("accepted_at") or 0,
        )  # fmt: skip
        return self._apply(answer, now)

    def _tick_install(self, now, local_offset_s, session_active):
        if self.state == lc.INSTALL_SCHEDULED and now < (self.data.get("retry_at") or 0):
            return self.state, [("wait", self.data["retry_at"], "retry")]
        answer = schedule.decide(
            now, local_offset_s, self.job, session_active, self.data.get("rng")
        )
        if answer[0] == "expired" and self.state == lc.INSTALLED:
            # Installed already: the deadline no longer applies, only the session does.
            answer = ("wait", now + schedule.SESSION_RECHECK_S, schedule.WAIT_SESSION)
            if not session_active:
                answer = ("go",)
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
