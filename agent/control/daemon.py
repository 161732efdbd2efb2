"""The agent daemon: wires the pure journey (agent/core/journey.py) to the board's I/O edges.

Invariant: every decision is the journey's; this file only executes its actions in order and
feeds results back as events. One thread owns the journey. Long actions (download, verify,
install, checks) run in a worker and post their result to the same queue as MQTT messages,
so the loop keeps petting the watchdog and answering cancels while they run. Nothing here
raises out of the loop: a failed action becomes an event with a reason.

Front-ends besides MQTT (EVerest, the local socket API: agent/frontends/ocpp) feed the same
queue through `submit` and `allow_installation` and see every status through their
`status(status, info)`; before a reboot the daemon gives them a bounded time to confirm that
the stack delivered what was reported (`pending()`), so InstallRebooting reaches the CSMS.
"""

import json
import logging
import os
import queue
import random
import threading
import time

from agent.checks import TrialContext, job_check_names, load_checks
from agent.checks.alarms import baseline as alarm_baseline
from agent.control.frontends import Frontends, boot_reason
from agent.control.observation import Observer
from agent.control.reporting import Reporter
from agent.core import lifecycle as lc
from agent.core.errors import ConfigError, Transient, UpdateError
from agent.core.jobs import job_from_request, job_id_of, parse_job
from agent.core.schedule import WAIT_SESSION
from agent.core.trial import TrialPolicy
from agent.frontends import channel as ch
from agent.state import statedir
from agent.state.history import History
from agent.state.journal import Journal
from agent.state.slotstate import SlotState
from agent.state.statedir import StateLock
from agent.transfer.stopper import DeadlinePassed, StepAbandoned, Stopper
from bootloader_iface.booted import check_attempts

log = logging.getLogger("charger-update")


class RebootFailed(Transient):
    reason = "reboot-failed"


RECOVER_S = 30  # default [system] retry_after_failure_s: pause after a failed step
# Default [bootloader] trial_attempts: boots the new slot gets before the bootloader falls
# back. More than one so a power cut during the trial resumes it instead of rolling back a
# good release; a slot that never brings the agent up still falls back after this many boots.
TRIAL_ATTEMPTS = 3
SUBMIT_TIMEOUT_S = 10.0  # a front-end's request waits this long for the loop's answer
BLOCK_GRACE_S = 5.0  # before blocking connectors: time for the stack to send earlier statuses
IDLE_WAIT_S = 3600  # nothing due: sleep until an event (or the watchdog) wakes the loop
MIN_WAIT_S = 0.05  # a due time just passed: look again soon, never spin


def trial_attempts(cfg):
    """[bootloader] trial_attempts, checked at start: found out only at try_slot, a typo
    would stop the journey halfway, with the new slot installed and not tried."""
    try:
        return check_attempts(cfg.bootloader.get("trial_attempts", TRIAL_ATTEMPTS))
    except ConfigError as e:
        raise ConfigError("%s: [bootloader] trial_attempts: %s" % (cfg.path, e.message),
                          hint=e.hint) from None  # fmt: skip


class Abandoned(Transient):
    """The step's journey moved on (cancelled or superseded): stop writing."""

    reason = "abandoned"


def _steps():
    """agent.control.steps, imported at the first job, not at start: the bundle, transfer and
    X.509 code behind it is most of the agent's memory, and an idle charger needs none of it
    (docs/transfer.md, idle figures)."""
    from agent.control import steps

    return steps


def _mcu_steps():
    """agent.control.components, imported when a release has MCUs (same reason as _steps)."""
    from agent.control import components

    return components


class Daemon:
    """cfg: agent Config; boot: BootControl; channel: MqttChannel/FakeChannel; stack: a
    ChargingStack; trust: agent.trust.store.Trust; system: reboot()/pet()/local_offset_s()
    and watchdog_interval_s (agent/control/system.py)."""

    def __init__(self, cfg, boot, channel, stack, trust, system, clock=time.time, rng=None,
                 frontends=()):  # fmt: skip
        self.cfg, self.boot, self.channel, self.stack = cfg, boot, channel, stack
        self.frontends = Frontends(frontends)
        self._roots = None  # OCPP firmware-signing roots, loaded at the first job that needs them
        self.trust, self.system, self.clock = trust, system, clock
        self.rng = rng or random.Random()
        trial = cfg.section("trial")
        checks = list(trial.get("checks", ["communication", "charging-session", "alarms"]))
        if cfg.section("components") and "components" not in checks:
            checks.append("components")  # the MCUs are part of every trial (issue 16)
        self.policy = TrialPolicy(int(trial.get("window_s", 600)), checks)
        load_checks(self.policy.required_checks)  # a misnamed check is a config error now
        self.job_checks = job_check_names(self.policy.required_checks)
        self.trial_attempts = trial_attempts(cfg)  # likewise a bad attempt budget
        self.observer = Observer(cfg.section("observation"), stack, clock)
        self.session_poll_s = float(cfg.section("charging_stack").get("poll_s", 10))
        channel.on_error = self.on_channel_error
        self.journal = Journal(os.path.join(cfg.state_dir, "journal.json"))
        self.history = History(cfg.state_dir)
        self.slots = SlotState(cfg.state_dir, boot)  # floors also in the boot environment
        self.reporter = Reporter(cfg, channel, boot, self.history, self.slots, clock, trust)
        self.events = queue.Queue()
        self.stopping = threading.Event()
        self.busy = False  # a long action runs in a worker
        self.step_id = 0  # results of a worker started for an older step are dropped
        self.worker = None
        self.stopper = Stopper()  # stops the transfers of the step running in the worker
        self.fetched = None  # (job id, what the download step learned) for the verify step
        self.pending_resume = True  # the journal's journey is picked up inside the loop
        self.recover_s = float(cfg.section("system").get("retry_after_failure_s", RECOVER_S))
        self.resumed_before = False
        self.rebooting = False
        self.wake_at = 0
        self.next_pet = 0.0  # time.monotonic() of the next watchdog pet
        self.journey = None
        # "FirmwareUpdate" when the agent itself rebooted the board into this boot (the
        # stack's BootNotification reason); None when this boot has another cause.
        self.boot_reason = boot_reason(self.journal.path)
        self.flash_slot = None  # MCU images to write before the trial checks

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def roots(self):
        if self._roots is None:
            from agent.trust.manufacturer import ManufacturerRoots

            self._roots = ManufacturerRoots.from_config(self.cfg)
        return self._roots

    def subscribe(self):
        """Jobs and cancels are acknowledged to the broker only once handled, i.e. after the
        journal write that remembers them: a power cut before that gets them redelivered."""
        for kind, suffix in (("job", ch.JOB), ("cancel", ch.CANCEL)):
            self.channel.subscribe(
                suffix, lambda t, p, ack, kind=kind: self.events.put((kind, p, ack)),
                manual_ack=True,
            )  # fmt: skip

    def run(self):
        self.subscribe()
        # A (re)connect wakes the loop so the inventory row is published at once.
        self.channel.on_connected = self.wake
        self.channel.start()
        self.frontends.start(self)
        seen_connections = -1
        while not self.stopping.is_set():
            self._pet_if_due()
            try:
                self.step()
            except UpdateError as e:
                self.recover(e)
            except Exception as e:  # a bug must not take the agent down: it would crash-loop
                log.exception("unexpected error")
                self.recover(UpdateError("internal error: %r" % e))
            connections = getattr(self.channel, "connections", 0)
            if connections != seen_connections:
                # After the first resume (the row then says what this boot decided), and on
                # every reconnect: a broker restarted without persistence lost the retained row.
                seen_connections = connections
                self.publish_inventory()
        self.stopper.stop(StepAbandoned("the agent is stopping"))
        self.frontends.stop()
        self.channel.stop()

    def step(self):
        """One turn of the loop: resume when due, else one event and one tick."""
        if self.pending_resume:
            # Never resume next to a worker of the abandoned step (e.g. still writing a slot).
            if self._worker_alive():
                self.worker.join(self._timeout())
            elif self.clock() >= self.wake_at:
                self.resume()
            else:
                self.stopping.wait(self._timeout())
            return
        try:
            item = self.events.get(timeout=self._timeout())
        except queue.Empty:
            item = None
        if item is not None:
            self.dispatch(item)
        if self.rebooting:
            return
        if not self.busy:
            self.tick()
        elif self.journey.state == lc.TRIAL:
            # The window holds even while a check hangs: the tick expires the trial.
            self.tick()
            if self.journey.state != lc.TRIAL:
                self._abandon_step()
        else:
            self._enforce_deadline()

    def stop(self):
        self.stopping.set()
        self.wake()

    def wake(self):
        """Make the loop look again now (it otherwise sleeps until its next due time)."""
        self.events.put(("wake",))

    def recover(self, error):
        """An action failed outright (e.g. the boot env became unreadable). Abandon the rest
        of that step, go back to the last journal record (what the board really did), say
        why, and try again later: never reboot after a boot switch that did not happen."""
        log.error("step failed: %s (%s)", error.message, error.hint or "will retry")
        try:
            journey = self.journal.load(self.policy)  # never raises, even on EIO
            job = journey.job
            self.report(lc.status_of(journey.state), {
                "job_id": job.id if job else None, "reason": error.reason,
                "detail": error.message, "retry_in_s": self.recover_s,
            })  # fmt: skip
        except Exception:  # the loop must outlive whatever broke: it would crash-loop
            log.exception("could not report the failure")
        self._abandon_step()
        self.pending_resume = True
        self.wake_at = self.clock() + self.recover_s

    def _abandon_step(self):
        """Whatever a running worker reports from now on belongs to no step: drop it, and
        stop its transfer (socket shut, back-off cut) so the worker thread ends too."""
        self.step_id += 1
        self.busy = False
        self.stopper.stop(StepAbandoned("the step was abandoned"))

    def _transfer_deadline(self):
        """The job's deadline while its download, verify or install runs in a worker."""
        journey = self.journey
        if not self.busy or journey is None or journey.job is None:
            return None
        if journey.state not in (lc.DOWNLOADING, lc.DOWNLOADED, lc.INSTALLING):
            return None
        return journey.job.deadline

    def _enforce_deadline(self):
        """A job's deadline bounds its transfer too: a download or install still running
        when it passes is stopped, and the worker reports the failure."""
        deadline = self._transfer_deadline()
        if deadline is not None and self.clock() >= deadline:
            job, state = self.journey.job, self.journey.state
            self.stopper.stop(DeadlinePassed(
                "job %s: its deadline passed while %s" % (job.id, lc.status_of(state))
            ))  # fmt: skip

    def _worker_alive(self):
        return self.worker is not None and self.worker.is_alive()

    def _timeout(self):
        """How long the loop may sleep: until the journey's next due time or the next
        watchdog pet. Everything else (a job, a cancel, a worker's result, a reconnect, stop)
        arrives on the queue and wakes it at once, so an idle agent costs no CPU."""
        now = self.clock()
        due = self.wake_at if self.wake_at > now else now + IDLE_WAIT_S
        deadline = self._transfer_deadline()
        if deadline is not None and deadline > now:
            due = min(due, deadline)  # wake to stop a transfer the deadline ends
        if self.system.watchdog_interval_s is not None:
            due = min(due, now + self.next_pet - time.monotonic())
        return max(due - now, MIN_WAIT_S)

    def _pet_if_due(self):
        """Pet the watchdog from this loop (never from a worker), at its own interval."""
        interval = self.system.watchdog_interval_s
        if interval is not None and time.monotonic() >= self.next_pet:
            self.system.pet()
            self.next_pet = time.monotonic() + interval

    def resume(self):
        """Continue the journal's journey on this boot (at start, and after a failed step)."""
        self.pending_resume = False
        statedir.ensure(self.cfg.state_dir)
        self.journey = self.journal.load(self.policy)
        if self.journal.problem:
            log.error("%s", self.journal.problem[0])
        if not self.resumed_before:
            self.check_trust()
        booted = self.boot.booted_slot()
        log.info("booted slot %s; journal state %s", booted, self.journey.state)
        first, self.resumed_before = not self.resumed_before, True
        # This boot's facts settle a trial the board came back to (power loss: resume it;
        # watchdog or panic: fail it). Only the first resume of this process has news.
        facts = self._boot_facts() if first else None
        self.execute(self.journey.resume(booted, self.clock(), facts)[1])
        if self._healthy_boot(booted):
            # The boot script counts every boot down (RAUC style): refill the good slot's
            # attempts, or three ordinary reboots later the board would fall back. A committed
            # slot's healthy boot also (re)raises the floor to what it carries.
            with StateLock(self.cfg.state_dir, "healthy boot of slot %s" % booted):
                self.boot.mark_good(booted)
                if self.slots.slot(booted).get("state") == "good":
                    self.slots.committed(booted)
                self.slots.raise_floors()  # a store that lost its copy gets it back

    def check_trust(self):
        """Say loudly, in the log and in a status the backend sees, when the trusted root is
        older than one this device trusted before (its rotated roots were deleted)."""
        if self.trust is None:
            return
        reason = "root-rollback"
        try:
            problem = self.trust.problem()
        except UpdateError as e:  # the floors themselves are unreadable: say that
            reason, problem = e.reason, e.message
        if problem:
            log.error("TRUST: %s", problem)
            self.report(lc.status_of(self.journey.state),
                        {"job_id": None, "reason": reason, "detail": problem})  # fmt: skip

    def _boot_facts(self):
        facts = self.system.boot_facts() if hasattr(self.system, "boot_facts") else {}
        new = self.journey.data.get("new_slot")
        if new:
            try:
                facts["attempts_left"] = self.boot.attempts_left(new)
            except UpdateError as e:  # evidence only: never let it stop the resume
                log.warning("attempts left of slot %s unknown: %s", new, e)
        log.info("boot facts: %s", json.dumps(facts, sort_keys=True))
        return facts

    def _healthy_boot(self, booted):
        state = self.journey.state
        record = self.slots.slot(booted).get("state")
        if state == lc.IDLE and record not in (None, "good"):
            # Booted a slot no trial ever passed (e.g. `charger-update install` and a manual
            # reboot): never commit it blindly; its one attempt runs out at the next boot.
            log.warning(
                "slot %s (%s) booted without a trial; not marking it good "
                "(charger-update boot mark-good to keep it)",
                booted,
                record,
            )
            return False
        if state == lc.IDLE or state == lc.COMMITTED:
            return True
        return lc.is_terminal(state) and booted != self.journey.data.get("new_slot")

    # -- inputs -----------------------------------------------------------------------------

    # -- front-ends (called from their threads) ----------------------------------------------

    def submit(self, request, timeout=SUBMIT_TIMEOUT_S):
        """A job request from a local front-end, replacing the running job if it may.
        Returns (answer, detail): "accepted", "accepted-canceled", "rejected" (busy past the
        slot switch, or a bad request), "ignored" (a job id seen before). The journal holds
        the job before "accepted" is returned."""
        reply = queue.Queue()
        self.events.put(("submit", request, reply))
        try:
            return reply.get(timeout=timeout)
        except queue.Empty:
            return "rejected", "the agent did not answer within %ss" % timeout

    def allow_installation(self):
        """The stack allows installing and rebooting (EVerest's allow_firmware_installation)."""
        self.events.put(("allow",))

    def dispatch(self, item):
        kind = item[0]
        if kind == "wake":
            return
        if kind in ("job", "cancel"):
            try:
                if kind == "job":
                    self.offer(item[1])
                else:
                    self.cancel(str(item[1].get("job_id") or item[1].get("id")))
            finally:
                # Saved (or refused, with a status saying why): the broker may forget it now.
                # A failure to handle it was reported too; redelivery would only repeat it.
                if len(item) > 2 and item[2] is not None:
                    item[2]()
        elif kind == "submit":
            self.take_request(item[1], item[2].put)
        elif kind == "allow":
            self.wake_at = 0
            self.execute(self.journey.allow(self.clock())[1])
        elif item[1] != self.step_id or not self.busy:
            log.info("dropping a %s of an abandoned step", kind)
        elif kind == "result":
            self.busy = False
            self.execute(self.journey.handle(item[2], self.clock(), item[3])[1])
        elif kind == "checks":
            self.busy = False
            self.execute(self.journey.check_results(item[2], self.clock())[1])
        elif kind == "local-error":
            self.busy = False
            raise item[2]  # into run(): recover() reports it and retries from the journal

    def cancel(self, job_id):
        before = self.journey.state
        actions = self.journey.cancel(job_id, self.clock())[1]
        if self.journey.state != before:
            self._abandon_step()  # a download or verify still running is moot now
            self.wake_at = 0
        self.execute(actions)

    def offer(self, payload):
        raw = json.dumps(payload).encode()
        try:
            job = parse_job(raw, self.cfg.device, checks=self.job_checks)
        except UpdateError as e:
            info = {"job_id": job_id_of(payload), "reason": e.reason, "detail": e.message}
            self.report("Idle", info)
            return
        try:
            booted = self.boot.booted_slot()
        except UpdateError as e:  # refused with the reason; the job is acknowledged
            self.report("Idle", {"job_id": job.id, "reason": e.reason, "detail": e.message})
            return
        before = self.journey.job
        actions = self.journey.offer(
            job, self.clock(), booted, self.boot.other_slot(booted), self.rng.random()
        )[1]
        if self.journey.job is not before:
            self.wake_at = 0  # a wait of the previous journey does not delay this one
        self.execute(actions)

    def take_request(self, request, answer):
        """answer((answer, detail)) for a front-end's job request, exactly once; see submit()."""
        try:
            job = job_from_request(request, self.cfg.device, checks=self.job_checks)
            booted = self.boot.booted_slot()
        except UpdateError as e:
            return answer(("rejected", e.message))
        before, old_state = self.journey.job, self.journey.state
        actions = self.journey.supersede(
            job, self.clock(), booted, self.boot.other_slot(booted), self.rng.random()
        )[1]
        if self.journey.job is not job:
            refused = [a for a in actions if a[0] in ("reject", "ignore")]
            kind = "ignored" if refused and refused[0][0] == "ignore" else "rejected"
            answer((kind, refused[0][2] if refused else "not taken"))
            return self.execute(actions)
        cancelled = before is not None and not lc.is_terminal(old_state) and old_state != lc.IDLE
        if cancelled:
            self._abandon_step()  # the old job's download or install is moot now
            self._await_abandoned_install()
        self.wake_at = 0
        taken = ("accepted-canceled" if cancelled else "accepted"), job.id
        try:
            self.execute(actions)  # saves the journal before the answer goes out
        except Exception:
            # A later action failed (e.g. the slot's state busy); the loop recovers from the
            # journal. The stack is told what the journal holds, never left to time out.
            held = self.journal.load(self.policy).job
            answer(taken if held is not None and held.id == job.id else ("rejected", "failed"))
            raise
        answer(taken)

    def _await_abandoned_install(self):
        """An abandoned install stops at its next chunk and lets go of the state lock; the
        new job's first action (marking that slot bad) needs it. Bounded: the stack waits."""
        if self._worker_alive() and self.worker.name == "install":
            self.worker.join(SUBMIT_TIMEOUT_S / 2)

    def tick(self):
        state = self.journey.state
        if state == lc.IDLE:
            return
        if state == lc.COMMITTED and self.observer.active(self.journey):
            if self.observer.due():
                self.observe()
            self.wake_at = self.observer.next_review(self.journey)
            return
        if lc.is_terminal(state):
            self.wake_at = 0
            self.execute(self.journey.finish(self.clock())[1])
            return
        if self.clock() < self.wake_at:
            return
        waits = state in (lc.INSTALL_SCHEDULED, lc.INSTALLED) or (
            state == lc.DOWNLOAD_SCHEDULED and self.journey.job.download_waits_for_sessions
        )
        active = waits and self._session_active()
        self.execute(self.journey.tick(self.clock(), self.system.local_offset_s(), active)[1])

    def observe(self):
        data = self.journey.data
        intact = self.slots.slot(data.get("old_slot")).get("state") == "good"
        finding, decision = self.observer.review(self.journey, intact)
        self.journal.save(self.journey)  # what was reviewed survives a restart
        if finding is None:
            return
        results = {"alarms": (False, finding)}
        self.publish_health("observation", results, "regression")
        self.execute(self.journey.regression(self.clock(), finding, decision)[1])

    def on_channel_error(self, topic, reason, detail):
        """A message the channel refused (oversized, not JSON): tell the operator why."""
        if topic.endswith(ch.JOB) or topic.endswith(ch.CANCEL):
            self.report(
                "Idle",
                {"job_id": None, "reason": "malformed-job", "detail": "%s: %s" % (reason, detail)},
            )

    def _session_active(self):
        try:
            return self.stack.session_active()
        except UpdateError as e:
            log.warning("charging stack unreachable (%s): treating as a session in progress", e)
            return True

    # -- actions ----------------------------------------------------------------------------

    def execute(self, actions):
        for action in actions:
            getattr(self, "do_" + action[0])(*action[1:])

    def do_save_journal(self):
        self.journal.save(self.journey)

    def do_report(self, status, info):
        self.report(status, info)
        if status in lc.FINAL_STATUSES:
            self.history.record_result(info.get("job_id"), status, info)
            self.publish_inventory()

    def do_wait(self, until, why):
        if why == WAIT_SESSION:  # ask the stack again soon: the session may end any minute
            until = min(until, self.clock() + self.session_poll_s)
        self.wake_at = until

    def do_ignore(self, job_id, reason):
        log.info("ignoring job %s: %s", job_id, reason)

    def do_reject(self, job_id, reason):
        self.report("Idle", {"job_id": job_id, "reason": "rejected", "detail": reason})

    def do_try_slot(self, slot):
        with StateLock(self.cfg.state_dir, "switching to slot %s" % slot):
            self.boot.try_slot(slot, self.trial_attempts)

    def do_mark_good(self, slot):
        with StateLock(self.cfg.state_dir, "committing slot %s" % slot):
            self.boot.mark_good(slot)
            self.slots.committed(slot)

    def do_mark_bad(self, slot):
        with StateLock(self.cfg.state_dir, "marking slot %s bad" % slot):
            self.boot.mark_bad(slot)
            self.slots.mark(slot, "bad")

    def do_block_sessions(self):
        # The stack sends what was reported first (SignatureVerified, DownloadScheduled), so
        # the CSMS sees the connectors go Unavailable after the status that explains it.
        self.frontends.await_delivery(self.clock, self.system.pet, self.stopping, BLOCK_GRACE_S)
        self._availability(False)

    def do_release_sessions(self):
        self._availability(True)

    def _availability(self, available):
        try:
            reply = self.stack.request("set_availability", available=available)
            if not reply.get("ok"):
                log.warning("charging stack refused set_availability %s: %s", available, reply)
        except UpdateError as e:
            log.warning("charging stack unreachable for set_availability %s: %s", available, e)

    def do_reboot(self):
        self.rebooting = True
        self.frontends.await_delivery(self.clock, self.system.pet, self.stopping)
        log.info("rebooting")
        self.channel.stop()
        if not self.system.reboot():
            # Still running: undo, and let recover() retry the step from the journal.
            self.rebooting = False
            self.channel.start()
            raise RebootFailed("the reboot command failed",
                               hint="check [system] reboot_command")  # fmt: skip

    def do_flash_components(self, slot):
        self.flash_slot = slot  # written by the checks' worker, before the checks run

    def do_confirm_components(self, slot):
        _mcu_steps().confirm(self.cfg, slot, self.stack, lambda *a: self.system.pet())

    def do_restore_components(self, slot):
        # On the loop thread: RolledBack is reported only once the MCUs match the old release.
        done = _mcu_steps().restore(self.cfg, slot, self.stack, lambda *a: self.system.pet())
        if done:
            log.info("MCUs back to slot %s's release: %s", slot, done)

    def do_cleanup(self):
        pass  # streaming installs keep no download cache

    def do_record_baseline(self):
        try:
            baseline = alarm_baseline(self.stack, self.clock)
            baseline["sessions"] = self.stack.sessions()
            self.journey.set_baseline(baseline)
        except UpdateError as e:
            log.warning("no alarm baseline (%s); the trial compares with an empty one", e)
            self.journey.set_baseline({"codes": [], "rate_per_hour": 0.0})

    def do_download(self):
        self._work(self._download, lc.DOWNLOAD_ERROR)

    def do_verify(self):
        self._work(self._verify, lc.DOWNLOAD_ERROR)

    def do_install(self, slot):
        self._work(self._install, lc.INSTALL_ERROR)

    def do_run_checks(self):
        # The loop wakes when the window ends, even while a check hangs (see step()).
        data = self.journey.data
        self.wake_at = data["trial_started_at"] + self.journey.policy().window_s
        self._work(self._run_checks, lc.CHECKS_FAILED)

    # -- workers (run off the loop thread; post exactly one result) ------------------------------

    def _work(self, fn, failure_event):
        """Run fn in a worker; it posts exactly one result tagged with this step's id. A bug
        in fn becomes `failure_event` (the failure that fits the step), never a dead loop."""
        if self._worker_alive() and self.worker.name == "install":
            # An abandoned install stops at its next chunk: never two writers on one slot.
            self.worker.join(2.0)
        self.step_id += 1
        step_id, self.busy = self.step_id, True
        stopper = self.stopper = Stopper()

        def run():
            try:
                result = fn(stopper)
            except _steps().LOCAL_ERRORS as e:  # the board's state: the loop recovers, retries
                result = ("local-error", e)
            except Exception as e:  # a bug in an adapter or OEM code must not kill the daemon
                log.exception("step failed")
                problem = {"reason": "internal", "detail": repr(e), "problem": repr(e)}
                result = ("result", failure_event, problem)
                if failure_event == lc.CHECKS_FAILED:  # every check failed with the bug
                    names = self.journey.policy().required_checks
                    result = ("checks", dict((n, (False, problem)) for n in names))
            self.events.put((result[0], step_id) + tuple(result[1:]))

        self.worker = threading.Thread(target=run, name=fn.__name__.strip("_"), daemon=True)
        self.worker.start()

    def _download(self, stopper):
        job = self.journey.job
        event, info, learned = _steps().fetch(job, self.cfg, stopper)
        self.fetched = (job.id, learned)
        return ("result", event, info)

    def _verify(self, stopper):
        job = self.journey.job
        learned = self.fetched[1] if self.fetched and self.fetched[0] == job.id else None
        return ("result",) + _steps().check(job, learned, self.cfg, self.trust, self.roots,
                                            self.clock(), self.slots, stopper)  # fmt: skip

    def _install(self, stopper):
        job, step_id = self.journey.job, self.step_id

        def on_step(percent, sizes=None):
            info = dict(sizes or {}, job_id=job.id, version=job.version, progress=percent)
            self.report("Installing", info)

        def check():
            if step_id != self.step_id:  # superseded: stop writing at this chunk
                raise Abandoned("install of job %s abandoned" % job.id)

        progress = _steps().StatusProgress(on_step, check)
        learned = self.fetched[1] if self.fetched and self.fetched[0] == job.id else None
        return ("result",) + _steps().write(job, self.cfg, self.boot, self.trust, self.roots,
                                            self.clock(), progress, learned,
                                            stopper)  # fmt: skip

    def _run_checks(self, stopper):
        data, job = self.journey.data, self.journey.job
        ctx = TrialContext(self.cfg, self.channel, self.stack, data.get("baseline"), self.clock,
                           data.get("trial_started_at"), self._wait,
                           data.get("agent_restarts", 0), self.frontends.csms_links())  # fmt: skip

        def reported(name, passed, evidence):
            info = {"job_id": job.id, "version": job.version, "check": name, "passed": passed,
                    "evidence": evidence}  # fmt: skip
            self.report("TrialRunning", info)

        ctx.slot = data.get("new_slot")
        ctx.components = self._flash_components(reported)
        names = self.journey.policy().required_checks
        if ctx.components.get("problem"):
            names = [n for n in names if n == "components"] or names  # the rest cannot pass
        results = _steps().run_checks(ctx, names, reported, self.policy.required_checks)
        verdict = "pass" if all(r[0] for r in results.values()) else "fail"
        self.publish_health("trial", results, verdict)
        return ("checks", results)

    def _flash_components(self, reported):
        slot, self.flash_slot = self.flash_slot, None
        if slot is None:
            return {}
        try:
            return _mcu_steps().flash(self.cfg, slot, self.stack, lambda *a: self.system.pet())
        except UpdateError as e:
            log.error("MCU write failed: %s", e)
            return {"problem": "MCU write failed: %s" % e.message, "reason": e.reason}

    def _wait(self, seconds):
        return not self.stopping.wait(seconds)

    # -- reporting (agent/control/reporting.py) ---------------------------------------------------

    def report(self, status, info):
        self.reporter.status(status, info)
        self.frontends.status(status, info)

    def publish_health(self, phase, results, verdict):
        job = self.journey.job
        self.reporter.health(job.id if job else None, self.journey.data.get("new_slot"), phase,
                             results, verdict)  # fmt: skip

    def publish_inventory(self):
        self.reporter.inventory()
