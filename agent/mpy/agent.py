"""The agent on a MicroPython board: the Linux daemon's loop (agent/control/daemon.py) without
threads. One loop owns the journey (agent/core/journey.py, shared and unchanged): it polls
MQTT, executes the journey's actions in order and feeds results back as events. Long steps
(download, verify, install, checks) run inline but poll MQTT between blocks, so keep-alives,
cancels and status acknowledgements keep flowing; a cancel abandons the running step.

Each long step is a phase (agent/mpy/phase.py): the code it needs (HTTP and the installer,
the verifiers, the trial checks) is imported when it starts and dropped when it ends, so the
heap between jobs holds only the loop, the journey, MQTT and the board's state. The download,
verify and install steps also run with the journey parked (agent/mpy/park.py): the journey's
own modules leave the heap while they run, and the journey is read back from the journal
after; so do the trial checks, and so does an idle board (no job) until a job or cancel
arrives.

Each boot hands the journey its facts (agent/core/resets.py): the SoC's reset cause
(system.boot_facts(), on an ESP32 esp32_boot_facts(machine)) and the boot attempts the new
slot has left.
ESP-IDF's bootloader gives an unconfirmed image one boot, so the attempts are the agent's: it
counts how often it armed the new slot (set_boot) for this install, and a watchdog reset leaves
none. A power loss during the trial thus brings the old slot back with attempts left, and the
journey arms the new slot again instead of rolling back (docs/micropython.md).

Invariant: every decision is the journey's; a failure of a step becomes the event that fits it
(with the error's reason), never an exception out of the loop: an action that fails outright
(a MemoryError, a flash error) is reported and the journey resumed from the journal later, as
the Linux daemon's recover() does, or, for a heap too split to read the journey back, the
VM restarts (machine.soft_reset(); without it the board resets, before the slot switch only)
with the step's or the trial's outcome kept (agent/mpy/heapreset.py); nothing is reported
before the journal saved the state it belongs to, and the journey never moves on from a
state its journal does not hold yet.
"""

import json
import sys
import time

# Of lifecycle only plain values (strings, tuples of them), which keep no module alive: the
# functions and classes of lifecycle, jobs, resets and trial are imported where they are
# called, so they leave the heap while a step runs parked (agent/mpy/park.py).
from agent.core.errors import ConfigError, UpdateError
from agent.core.lifecycle import (
    COMMITTED,
    DOWNLOAD_ERROR,
    DOWNLOAD_SCHEDULED,
    DOWNLOADED,
    DOWNLOADING,
    FINAL_STATUSES,
    IDLE,
    INSTALL_ERROR,
    INSTALL_SCHEDULED,
    INSTALLED,
    INSTALLING,
    SIGNATURE_OK,
    SIGNATURE_VERIFIED,
    TERMINAL,
)
from agent.mpy import phase as phases
from agent.mpy.channel import CANCEL, INVENTORY, JOB, PONG, STATUS
from agent.mpy.jsonout import dumps
from agent.mpy.phase import Phase
from agent.mpy.store import Board, Journal

CHECKS = ("communication", "charging-session", "alarms")  # agent/mpy/checks.py
TRIAL_ATTEMPTS = 3  # boots of the new slot per install, as the Linux agent's default
RECOVER_S = 10  # after an action failed outright: resume from the journal this much later
MAX_TIME_S = 6 * 3600  # one transfer at most, unless download max_time_s says otherwise
PARKED_STEPS = ("download", "verify", "install")  # run with the journey parked (park.py)
HEAP_RESETS = 3  # resets for a split heap in a row at one state of one job (heap_reset)
BEFORE_SWITCH = (IDLE, DOWNLOAD_SCHEDULED, DOWNLOADING, DOWNLOADED, SIGNATURE_VERIFIED,
                 INSTALL_SCHEDULED, INSTALLING)  # fmt: skip
CHECK_RESULTS = "check-results"  # a trial's outcome kept across a soft reset (heap_reset)


def esp32_boot_facts(machine):
    """Journey.resume's boot facts from MicroPython's machine.reset_cause() on an ESP32: a
    power-on (or brown-out), a watchdog, and a soft reset (machine.soft_reset(): the VM
    restarted in the same boot of the chip, the bootloader did not run: an agent restart)
    name a cause. MicroPython's esp32 port reports esp_restart() and a panic alike as
    HARD_RESET: that stays "unknown" rather than a guess (agent/core/resets.py)."""
    cause = machine.reset_cause()
    if cause == machine.PWRON_RESET:
        return {"reset": "power-on"}
    if cause == machine.WDT_RESET:
        return {"reset": "watchdog"}
    if cause == machine.SOFT_RESET:
        return {"reset": "agent-restart"}
    return {"reset": "unknown"}


class Abandoned(Exception):
    """The step's journey moved on (cancel): its result belongs to nobody."""


def _park():
    from agent.mpy import park  # imported when used; a step's phase drops it after

    return park


def _inbox(journey):
    """What came while the journey was parked (a park.Parked has an inbox), or None."""
    return getattr(journey, "inbox", None)


def _job_id(journey):
    """The id of a journey's (or a parked one's) job, or None."""
    return journey.job.id if journey.job is not None else None


def _heapreset():
    from agent.mpy import heapreset  # at boot after a heap reset; start() drops it after

    return heapreset


def _steps():
    from agent.mpy import steps  # imported inside the step's phase, dropped after it

    return steps


def _step_failure(error):
    """The info of a failed step's event: an UpdateError's reason; a MemoryError (a heap too
    fragmented for a buffer) is transient, retried after a collection; anything else is a
    bug, reported as internal."""
    if isinstance(error, UpdateError):
        return {"reason": error.reason, "detail": error.message, "transient": bool(error.retry)}
    if isinstance(error, MemoryError):
        import gc

        gc.collect()
        return {"reason": "no-memory", "detail": "heap exhausted", "transient": True}
    return {"reason": "internal", "detail": repr(error)}


class Agent:
    """cfg: the board's agent.json (dict); boot: agent.mpy.ota.OtaBoot; channel: Channel;
    stack: the charging firmware's callback object; trust: agent.mpy.trust.Trust;
    system: reboot(), local_offset_s() and boot_facts() (esp32_boot_facts(machine); without
    it every reset is of unknown cause), and optionally soft_reset() (machine.soft_reset:
    the resets for a split heap then restart the VM only, and may come in the trial too)."""

    def __init__(self, cfg, boot, channel, stack, trust, system, after_save=None, rng=None):
        self.cfg, self.boot, self.channel, self.stack = cfg, boot, channel, stack
        self.trust, self.system = trust, system
        self.device = cfg["device"]
        if cfg.get("log_heap"):  # heap figures on the console at each phase and journal save
            phases.LOG = print
        self.window_room = []  # see reserve_window(); taken first, while the heap is youngest
        self.reserve_window()
        # The journey's modules load now, while the heap is young (no name of them is kept):
        # loaded first by the journal in start(), they landed between the connection's
        # buffers, and the heap then had no 592 bytes in one piece for the inventory at 110K.
        from agent.core import journey  # noqa: F401

        # A job may add checks this board has; anything else is refused as malformed-job.
        self.job_checks = sorted(set(self.trial_policy().required_checks) | set(CHECKS))
        # [install] park_journey (default on): the transfer steps run with the journey parked.
        self.parking = bool(cfg.get("install", {}).get("park_journey", True))
        state_dir = cfg.get("state_dir", "data")
        self.journal = Journal(state_dir + "/journal.json", after_save)
        # Jobs and cancels that arrived while the board idled parked (defer()); left there by
        # a power cut, they are taken at the first turn (a job already taken is ignored then).
        self.inbox_path = state_dir + "/inbox.txt"
        self.heap_reset_path = state_dir + "/heap-reset.json"  # see heap_reset()
        self.deferred = _exists(self.inbox_path) or _exists(self.inbox_path + ".taken")
        self.board = Board(state_dir)
        self.journey = None  # agent/core/journey.py's Journey; a park.Parked while parked
        self.events = []
        self.step = 0
        self.hold_steps = False  # at boot after a heap reset: see execute()
        self.held = None  # the actions held at boot for the connection (heapreset.hold)
        self.inventory_due = None  # when to build the row again (no heap for it before)
        self.envelope = None  # the raw signed header of the job's bundle (bytes)
        self.final_seq = None  # the seq of the last final status this boot sent
        self._download_tls = None  # see download_tls()
        self.wake_at = 0
        self.resume_at = None  # set after an action failed outright (recover)
        self.running = True
        self.rng = rng or _urandom_float
        channel.on_error = self.on_channel_error
        channel.version = cfg.get("firmware_version")

    # -- life cycle -------------------------------------------------------------------------

    def start(self):
        # An idle board (its journal says IDLE, or has none) resumes before anything else and
        # parks: its journey's modules leave the heap before the root's verdict and the
        # connection take theirs (resume() in IDLE reports nothing and needs no connection).
        idle = self.parking and self.journal_idle()
        # After a reset for a split heap (heap_reset), the journey also resumes first, while
        # the heap is young, and the step it starts waits, parked, for the connection.
        early = idle or (self.parking and _exists(self.heap_reset_path)
                         and _heapreset().after(self))  # fmt: skip
        if early:
            self.hold_steps = True
            self.resume_safely()
            try:
                if self.deferred and self.journey is not None:  # acknowledged before a reset
                    self.take_deferred()
                if (self.journey is not None and _inbox(self.journey) is None
                        and not self.held and self.resume_at is None):  # fmt: skip
                    # A step due now is held, parked; never past held actions, nor after an
                    # action failed (the journey in RAM may be ahead of the journal: a trial
                    # COMMITTED whose save failed was finished to IDLE unconfirmed at 98K).
                    self.tick()
            except Exception as e:  # never a crash loop (set_boot's MemoryError at 96K was)
                self.recover(e)
            self.hold_steps = False
            if self.parking and self.journey is not None and _inbox(self.journey) is None:
                _park().park(self, idle=True)  # waiting (a retry's backoff): back at the first turn
            phases.drop(("agent.mpy.park", "agent.mpy.heapreset"))
        prepare = getattr(self.trust, "prepare", None)
        # The root's verdict, before the connection takes its heap; not for an install held
        # here whose check takes the verify step's kept verdict (agent/mpy/signed.py): at
        # 96K the root's verifier found no 640 bytes after the held install was parked.
        if prepare is not None and not (self.held and self.held[0][0] == "install"
                                        and _verdict_kept(self.trust)):  # fmt: skip
            prepare()
        self.reserve_window()
        self.channel.subscribe(JOB, self.on_job)
        self.channel.subscribe(CANCEL, self.on_cancel)
        self.channel.subscribe(PONG, self.channel.on_pong)
        self.channel.poll()
        # The last final status of an earlier boot was never acknowledged: send it again,
        # before resume() may run a whole trial and record a new one.
        unsent = self.board.history().get("final")
        if unsent and unsent.get("seq") != self.final_seq:  # not one the early resume sent
            self.channel.publish(STATUS, unsent, on_ack=self.board.final_delivered)
        if not early:
            self.resume_safely()
        self.publish_inventory()
        self.log_heap("started")

    def journal_idle(self):
        """Whether the journal holds no journey or an IDLE one (it is not loaded for that)."""
        from agent.mpy.store import read_json

        try:
            record = read_json(self.journal.path)
        except Exception:  # unreadable: resume() after the connection says what it is
            return False
        return record is None or (isinstance(record, dict) and record.get("state") == IDLE)

    def resume_safely(self):
        """resume() at boot, parked after if the board is idle."""
        try:
            self.resume(first=True)
        except Exception as e:  # never a crash loop: report, and resume again later
            self.recover(e)
        self.park_idle()

    def reserve_window(self):
        """With [install] hold_window: hold room for the inflater (the install's one large
        block, its window, and the state it allocates just before) while the heap is young
        and has long free runs; the installer lets it go just before the inflater's first
        read. Without it, small objects left across a job can split the heap until no run of
        that size remains. The price: that room is taken at all times but in the download
        and verify steps, which run in it (_run_step; docs/micropython.md)."""
        install = self.cfg.get("install", {})
        if self.window_room or not install.get("hold_window"):
            return
        import gc

        gc.collect()
        bits = int(install.get("max_window_bits", 15))
        try:  # deflate's state (1,336 bytes on the unix port x86-64) comes before its window
            self.window_room.append(bytearray((1 << bits) + 1536))
        except MemoryError:  # the install allocates its window itself, if it can
            print("no room held for a %d KiB inflate window" % ((1 << bits) // 1024))

    def run(self):
        self.start()
        seen = self.channel.connections
        while self.running:
            try:
                self.turn()
            except Exception as e:
                self.recover(e)
            if self.channel.connections != seen:  # a new connection: republish the row
                seen = self.channel.connections
                self.publish_inventory()
            time.sleep(0.02)

    def turn(self):
        self.channel.poll()
        if self.resume_at is not None:
            if time.time() >= self.resume_at:
                self.resume_at = None
                self.resume()  # no news about the boot: only the journal's state
            return
        if self.held is not None:  # the boot's last actions, held for the connection
            held, self.held = self.held, None
            self.execute(held)
        if self.parked_waiting() and not self.unpark():
            return
        if self.deferred:
            self.take_deferred()
        while self.events:
            event = self.events.pop(0)
            if event[0] == self.step:
                self.execute(self.journey.handle(event[1], time.time(), event[2])[1])
        self.tick()
        if self.inventory_due is not None and time.time() >= self.inventory_due:
            self.publish_inventory()

    def parked_waiting(self):
        """Whether the journey is parked as idle while its job waits (start(), after a heap
        reset) and the wait is over: a turn reads it back then, not at once (at 96K, next to
        the connection, that read-back failed for 1,264 bytes in every VM of a wait for
        install_at; at the wait's end it fails once, and the next VM's boot starts the step
        while its heap is young). A method, so no local of turn() holds it."""
        journey = self.journey
        return (_inbox(journey) is not None and journey.idle and journey.state != IDLE
                and time.time() >= self.wake_at)  # fmt: skip

    def recover(self, error):
        """An action failed outright: abandon the step, say so with the journal's state, and
        resume from the journal (what the board really did) RECOVER_S later."""
        import gc

        self.step += 1
        self.events = []
        gc.collect()
        if isinstance(error, MemoryError) and self.restart_for(error):
            return
        reason = "no-memory" if isinstance(error, MemoryError) else getattr(error, "reason",
                                                                           "internal")  # fmt: skip
        detail = getattr(error, "message", None) or repr(error)
        print("step failed: %s (%s); resuming from the journal in %ds" % (reason, detail,
                                                                         RECOVER_S))  # fmt: skip
        self.resume_at = time.time() + RECOVER_S
        try:  # the journal's record as it is: a second journey next to this one may not fit
            from agent.core.lifecycle import status_of
            from agent.mpy.store import read_json

            record = read_json(self.journal.path) or {}
            job = record.get("job") or {}
            self.report(status_of(record.get("state") or IDLE), {
                "job_id": job.get("id"), "reason": reason, "detail": detail,
                "retry_in_s": RECOVER_S,
            })  # fmt: skip
        except Exception as e:  # the loop must outlive whatever broke
            print("could not report the failure: %r" % e)

    def restart_for(self, error):
        """A MemoryError recover() got: an action the heap could not do even after a
        collection (set_boot's image check found no 1280 bytes in one piece at 120K with
        TLS, at every resume), or the journey that could not be read back (at boot, at an
        unpark, for the jobs left in the inbox file): a reset for the heap, in the state the
        journal holds (a journey in RAM may be ahead of it), the journal resuming as after a
        power cut (heap_reset); False if none may come (recover() goes on as before)."""
        from agent.mpy.store import read_json

        try:
            record = read_json(self.journal.path) or {}
        except Exception:  # the heap again, or the flash: recover() as before
            return False
        print("out of heap: %r" % error)
        job_id = (record.get("job") or {}).get("id")
        state = record.get("state") or IDLE
        if self.heap_reset(state, job_id, None, _inbox(self.journey) or ()):
            return True
        # The resets are spent. At a boot after them (heapreset.py is loaded then, and only
        # then: it stays off the heap otherwise), a trial boot no VM could read back ends.
        heapreset = sys.modules.get("agent.mpy.heapreset")
        new_slot = (record.get("data") or {}).get("new_slot")
        return heapreset is not None and heapreset.end_trial_boot(self, state, job_id, new_slot)

    def boot_facts(self):
        """This boot's facts for the journey: the SoC's reset cause, and the boot attempts
        the new slot has left (those this install did not arm it for yet; none after a
        watchdog reset)."""
        from agent.core import resets

        try:
            facts = dict(self.system.boot_facts())  # a real board: esp32_boot_facts(machine)
        except Exception as e:  # a platform without the call: the cause is unknown
            print("reset cause unknown (%r)" % e)
            facts = {}
        reset = facts["reset"] = resets.normalise(facts.get("reset"))
        if reset == resets.AGENT_RESTART and _exists(self.heap_reset_path):
            from agent.mpy.store import read_json, write_atomic

            try:  # a boot whose cause no journey took before this VM (heap_reset), once:
                record = read_json(self.heap_reset_path) or {}  # a soft reset after this
                cause = record.pop("boot", None)  # one (the OEM's) is an agent restart
                if isinstance(cause, str):
                    write_atomic(self.heap_reset_path, record)
                    reset = facts["reset"] = resets.normalise(cause)
            except Exception as e:  # the flash or the heap: an agent restart, as before
                print("boot's cause not taken (%r)" % e)
        new = self.journey.data.get("new_slot")
        if new:
            attempts = int(self.cfg.get("trial", {}).get("attempts", TRIAL_ATTEMPTS))
            armed = self.board.slots()["slots"].get(new, {}).get("armed", 0)
            facts["attempts_left"] = 0 if reset in resets.CRASHES else max(0, attempts - armed)
        print("boot facts: %s" % dumps(facts))
        return facts

    def resume(self, first=False):
        """Continue the journal's journey: at start (with this boot's facts), and after a
        failed action (without: nothing new about the boot). After a failed action the
        journey in RAM is parked first: its objects and modules leave the heap before the
        journal's are made (a heap that failed an action seldom holds two journeys: at
        98K-100K every resume then failed, and the board stayed in recover() for good); if
        the load fails, the journey stays parked and what arrives waits in its inbox."""
        if self.parking and self.journey is not None and _inbox(self.journey) is None:
            _park().park(self)
            phases.drop(("agent.mpy.park",))
        inbox = _inbox(self.journey) or ()
        # No room for the journey (at 98K next to the connection on the new slot's first
        # boot): the MemoryError reaches recover(), whose reset for the heap makes the next
        # boot (or VM) resume it first, while the heap is young (restart_for).
        self.journey = self.journal.load(self.trial_policy())
        if self.journal.problem:
            print(self.journal.problem)
        booted = self.boot.booted_slot()
        print("booted slot %s; journal state %s" % (booted, self.journey.state))
        after_reset = first and self.hold_steps and _exists(self.heap_reset_path)
        outcome = _heapreset().outcome(self) if after_reset else None
        if outcome is not None:  # the step's result, as if no reset had come between
            self.apply_outcome(outcome)
            return
        facts = self.boot_facts() if first else None
        self.execute(self.journey.resume(booted, time.time(), facts)[1])
        state = self.journey.state
        if state in (IDLE, COMMITTED) or (
            state in TERMINAL and booted != self.journey.data.get("new_slot")
        ):
            self.boot.mark_good(booted)  # a healthy boot of a confirmed slot: idempotent
        self.handle_inbox(inbox)  # what came while a step that failed outright was parked

    def apply_outcome(self, outcome):
        """Hand the journey a step's outcome kept across a reset for the heap. If its actions
        find no room (a young heap, but split by the journey's read-back: at 98K its largest
        free run was 384 bytes), reset again with the outcome kept: the journal says what
        ran (a save that was done moves it on, and the outcome is then moot)."""
        event, info = outcome
        state, job_id = self.journey.state, _job_id(self.journey)
        print("after a reset for the heap: %s in %s" % (event, state))
        try:
            if event == CHECK_RESULTS:  # the trial's checks ran before a soft reset
                self.execute(self.journey.check_results(info, time.time())[1])
            else:
                self.execute(self.journey.handle(event, time.time(), info)[1])
        except MemoryError:
            if not self.heap_reset(state, job_id, outcome, ()):
                raise

    # -- inputs -----------------------------------------------------------------------------

    def on_job(self, payload):
        if not self.defer("job", payload):
            self._job(payload)

    def _job(self, payload):
        if _inbox(self.journey) is not None and not self.unpark():  # handled after the step
            self.journey.inbox.append(("job", payload))
            return
        from agent.core.jobs import job_id_of, parse_job

        try:
            job = parse_job(dumps(payload).encode(), self.device, checks=self.job_checks)
        except UpdateError as e:
            info = {"job_id": job_id_of(payload), "reason": e.reason, "detail": e.message}
            self.report("Idle", info)
            return
        booted = self.boot.booted_slot()
        before = self.journey.job
        actions = self.journey.offer(job, time.time(), booted, self.boot.other_slot(booted),
                                     self.rng())[1]  # fmt: skip
        if self.journey.job is not before:
            self.wake_at = 0
        self.execute(actions)

    def on_cancel(self, payload):
        if not self.defer("cancel", payload):
            self._cancel(payload)

    def _cancel(self, payload):
        job_id = str(payload.get("job_id") or payload.get("id"))
        if _inbox(self.journey) is not None and not self.unpark():  # handled after the step
            self.journey.inbox.append(("cancel", payload))
            if self.journey.cancels(job_id):
                self.step += 1  # the journey will take it: the step ends at its next poll
            return
        before = self.journey.state
        actions = self.journey.cancel(job_id, time.time())[1]
        if self.journey.state != before:
            self.step += 1  # a download still running is moot now
            self.wake_at = 0
            self.resume_at = None  # so is a resume after a failed step: the journal has this
        self.execute(actions)

    def on_channel_error(self, suffix, reason, detail):
        if suffix in (JOB, CANCEL):
            self.report("Idle", {"job_id": None, "reason": "malformed-job",
                                 "detail": "%s: %s" % (reason, detail)})  # fmt: skip

    def tick(self):
        if _inbox(self.journey) is not None:  # unpark failed: resume() brings it back
            return
        state = self.journey.state
        if state == IDLE:
            self.park_idle()
            return
        if state in TERMINAL:
            self.wake_at = 0
            self.execute(self.journey.finish(time.time())[1])
            return
        if time.time() < self.wake_at:
            return
        active = state in (INSTALL_SCHEDULED, INSTALLED) and self._session_active()
        offset = self.system.local_offset_s()
        self.execute(self.journey.tick(time.time(), offset, active)[1])

    def _session_active(self):
        try:
            return bool(self.stack.session_active())
        except Exception as e:  # an unreachable stack counts as a session in progress
            print("charging stack unreachable (%r): deferring" % e)
            return True

    # -- actions ----------------------------------------------------------------------------

    def execute(self, actions):
        for i, action in enumerate(actions):
            if self.hold_steps and _heapreset().hold(self, actions[i:]):
                return
            do = getattr(self, "do_" + action[0])
            try:
                do(*action[1:])
            except MemoryError:
                # Often a heap too fragmented for one buffer, not too full: collect and do
                # it once more, rather than lose the rest of the list (a cancel's Cancelled
                # report, taken in an MQTT callback, was lost that way on a 108K heap). Not
                # the trial: its verdict's actions had their own second try, and a second
                # trial ran all checks again for a verdict the journey then refused
                # (IllegalTransition in committed, at 108K); recover() resumes the journal.
                if action[0] == "run_checks":
                    raise
                import gc

                gc.collect()
                try:
                    do(*action[1:])
                except MemoryError:
                    print("action %s: no room, twice" % action[0])
                    raise

    def do_save_journal(self):
        self.journal.save(self.journey)
        self.log_heap("saved " + self.journey.state)

    def do_save_record(self, record, state):  # a save held at boot (heapreset.hold)
        self.journal.save_record(record, state)
        self.log_heap("saved " + state)

    def log_heap(self, where):
        if phases.LOG is not None:
            phases.report("heap %s: used %d free %d" % ((where,) + phases.heap()))

    def do_report(self, status, info):
        if status not in FINAL_STATUSES:
            self.report(status, info)
            return
        # A journey's last status survives a power cut: kept on flash until acknowledged.
        message = self.report(status, info, on_ack=self.board.final_delivered)
        self.final_seq = message["seq"]
        self.board.record_result(info.get("job_id"), status, info, message)
        self.publish_inventory()

    def do_wait(self, until, why):
        self.wake_at = until

    def do_ignore(self, job_id, reason):
        print("ignoring job %s: %s" % (job_id, reason))

    def do_reject(self, job_id, reason):
        self.report("Idle", {"job_id": job_id, "reason": "rejected", "detail": reason})

    def do_try_slot(self, slot):
        self.board.armed(slot)  # counted before: a cut after set_boot still used an attempt
        try:
            self.boot.try_slot(slot)
        except Exception:  # set_boot refused or failed: ESP-IDF armed nothing, no boot used
            self.board.armed(slot, -1)
            raise

    def do_mark_good(self, slot):
        self.boot.mark_good(slot)
        self.board.committed(slot)

    def do_mark_bad(self, slot):
        confirmed = self.journey.data.get("committed_at") is not None
        self.boot.mark_bad(slot, confirmed)
        self.board.mark(slot, "bad")

    def do_reboot(self):
        print("rebooting")
        self.channel.drain(3.0)  # InstallRebooting and friends reach the broker first
        self.channel.stop()
        self.running = False
        self.system.reboot()

    # A wallbox on MicroPython carries no separate MCU components: nothing to flash, confirm
    # or restore around its trial (agent/core/journey.py still names the steps).
    def do_flash_components(self, slot):
        pass

    def do_confirm_components(self, slot):
        pass

    def do_restore_components(self, slot):
        pass

    def do_cleanup(self):
        self.envelope = None
        _remove(self.heap_reset_path)  # the journey is over: its resets count no more

    def do_record_baseline(self):
        try:
            with self.phase("baseline"):
                self.journey.set_baseline(_steps().baseline(self.stack))
        except Exception as e:
            print("no alarm baseline (%r); the trial compares with an empty one" % e)
            self.journey.set_baseline({"codes": [], "rate_per_hour": 0.0})

    def do_download(self):
        self._run_step("download", DOWNLOAD_ERROR)

    def do_verify(self):
        # A header that cannot be fetched again is DOWNLOAD_ERROR (steps.verify); what raises
        # recovers, but the heap, once its resets are spent (_run_step), is DOWNLOAD_ERROR too.
        self._run_step("verify", None)

    def do_install(self, slot):
        self._run_step("install", INSTALL_ERROR, slot)
        self.reserve_window()  # for a retry: the window it held is gone

    def do_run_checks(self):
        """The trial's checks, with the journey parked (agent/mpy/park.py): they read its
        job, checks, baseline and new slot, not its code. The journal holds the journey: it
        saves before it starts the trial, and a resume without boot facts (after a failed
        step) only clears the results in RAM, which check_results replaces; a job or cancel
        arriving meanwhile is handled after, in the trial's state, as during the checks."""
        step = self.step
        parked = self.parking
        try:
            with self.phase("trial"):
                if parked and _inbox(self.journey) is None:  # else parked at boot (hold)
                    _park().park(self, trial=True)
                results = _steps().run_checks(self, step)
        except Abandoned:
            results = None
        if parked and _inbox(self.journey) is not None:  # what raises leaves it parked
            journey = self.journey
            try:
                self.journey = self.journal.load(self.trial_policy())
            except MemoryError:
                # The checks split the heap (at 96K-100K, 11 KiB free, no 239 bytes in one
                # piece): a soft reset keeps this boot of the new slot, and the next VM hands
                # the journey the results (heap_reset); without one, recover() as before.
                outcome = (CHECK_RESULTS, results) if results is not None else None
                if self.heap_reset(journey.state, _job_id(journey), outcome, journey.inbox):
                    return
                raise
            self.handle_inbox(journey.inbox)
        if results is not None:
            self.execute(self.journey.check_results(results, time.time())[1])

    # -- steps ------------------------------------------------------------------------------

    def _run_step(self, name, failure, *args):
        """Run the long step steps.NAME inline, in its phase; its result event is queued for
        the loop (no recursion). A failure becomes the `failure` event, or, where the state
        has no failure edge (failure None), a recover(). The download, verify and install
        steps run with the journey parked (agent/mpy/park.py): its code is off the heap
        meanwhile, and the journey is read back from the journal after."""
        parked = self.parking and name in PARKED_STEPS
        self.step += 1
        step = self.step
        # The download and verify steps run in the inflater's room (the verify step found no
        # 592 bytes outside it at 96K); it is taken back before the journey's read-back.
        lent = bool(parked and name != "install" and self.window_room)
        if lent:
            self.window_room.clear()
        try:
            with self.phase(name):
                if parked and _inbox(self.journey) is None:  # else parked at boot (execute)
                    _park().park(self)  # park.py comes and goes with the phase
                result = getattr(_steps(), name)(self, *args)
        except Abandoned:
            result = None
        except Exception as e:  # a bug must not kill the agent: the step fails
            result = e
        if parked and name == "verify" and isinstance(result, tuple) and result[0] == SIGNATURE_OK:
            # The install starts in a fresh VM, the verdict kept: MicroPython never frees an
            # interned name, and the verify's modules brought this VM within a few names of
            # its next qstr pool, one block of 1280 entries (15 KiB here) that no heap this
            # small has (docs/micropython.md, "qstr pools"). The young heap helps too.
            if self.heap_reset(self.journey.state, _job_id(self.journey), result,
                               _inbox(self.journey) or (), step=True,
                               why="verified: a fresh VM for the install"):  # fmt: skip
                return  # the room is not taken back: the VM ends
        if lent:
            self.reserve_window()
        if parked and isinstance(result, MemoryError):
            # The heap's state, not the transfer's (park() or the step met it): after a reset
            # the journal runs the step again, as after a power cut (no retry spent, no
            # backoff waited, with the heap whole); past [install] heap_resets, the failure
            # event.
            print("step %s: %r" % (name, result))
            if self.heap_reset(self.journey.state, _job_id(self.journey), None,
                               _inbox(self.journey) or ()):  # fmt: skip
                return
        if parked and failure is None and isinstance(result, MemoryError):
            failure = DOWNLOAD_ERROR  # the verify step's: fetched and verified again, or not
        if isinstance(result, Exception) and failure is not None:
            result = failure, _step_failure(result)
        if parked and _inbox(self.journey) is not None:  # not if park() itself failed
            journey = self.journey
            try:  # the journal holds the journey (agent/mpy/park.py)
                self.journey = self.journal.load(self.trial_policy())
            except Exception as e:  # the heap: resume() reads the journal (and the inbox) later
                outcome = None if isinstance(result, Exception) else result
                if outcome is None and result is not None:
                    print("step %s failed: %r" % (name, result))
                if not (isinstance(e, MemoryError) and self.heap_reset(
                        journey.state, _job_id(journey), outcome, journey.inbox,
                        step=True)):  # fmt: skip
                    self.recover(e)
                return
            self.handle_inbox(journey.inbox)
        if isinstance(result, Exception):
            self.recover(result)
            return
        if result is not None:
            self.events.append((step, result[0], result[1]))

    def heap_reset(
        self, state, job_id, outcome, inbox, step=False, why="heap too split for the journey"
    ):
        """The journey cannot come back (at boot, after a parked step, after the trial's
        checks, after a failed action, or for a job that arrived while it idled parked), or
        a parked step met a MemoryError: reset, the step's outcome kept
        (agent/mpy/heapreset.py): a soft reset (the VM only, in the same boot of the chip)
        if the system has one, in any state; else a hard reset, before the slot switch only
        (after it, a reset would end the new slot's trial boot). False, for recover() as
        before, in the other cases, with the journey never parked, and past [install]
        heap_resets in a row at one state of one job (then once more for the outcome of a
        download, verify or install step of this VM: `step`). Here, not in heapreset.py:
        importing that module at this moment failed for want of heap."""
        soft = getattr(self.system, "soft_reset", None)
        if not self.parking or (soft is None and state not in BEFORE_SWITCH):
            return False  # unparked ([install] park_journey off), the boot resumes late
        limit = heap_resets(self.cfg)
        try:
            from agent.mpy.store import read_json, write_atomic

            last = read_json(self.heap_reset_path) or {}
            count = 1
            if last.get("state") == state and last.get("job_id") == job_id:
                count = int(last.get("count", 0)) + 1
            kept = list(outcome) if outcome else None
            if count > limit:
                # Spent, but a step of this VM gave an outcome that no read-back can take:
                # once more, so the journey gets it in a young heap. A failure then ends the
                # job (not transient: a retry meets the same wall); without this the board
                # reported no-memory every 10 s for good (at 96K).
                if kept is None or not step or not limit or last.get("final"):
                    return False
                if kept[0] in (DOWNLOAD_ERROR, INSTALL_ERROR):
                    kept[1] = dict(kept[1], transient=False)
            for kind, payload in inbox:  # the inbox file keeps their order (take_deferred)
                with open(self.inbox_path, "a") as f:
                    f.write(kind + " " + dumps(payload) + "\n")
            if kept is None and count > 1:  # an outcome not taken yet (heapreset.outcome)
                kept = last.get("outcome")  # stays the journey's: its step must not rerun
            record = {"state": state, "job_id": job_id, "count": count, "outcome": kept}
            if self.journey is None:
                # The boot's read-back failed: no journey took this boot's reset cause, and
                # the next VM reads SOFT_RESET. Kept for it (boot_facts()): at 96K a power
                # loss in the trial came back as an agent restart, and power losses that
                # used up the new slot's attempts were reported as unexplained resets,
                # which a fleet halts on.
                try:
                    cause = dict(self.system.boot_facts()).get("reset")
                except Exception:
                    cause = None
                if cause == "agent-restart":  # an earlier VM's, passed on
                    cause = last.get("boot")
                if cause:
                    record["boot"] = cause
            if count > limit:
                record["final"] = True
            write_atomic(self.heap_reset_path, record)
        except Exception as e:  # the flash or the heap: recover() as before
            print("no reset for the heap (%r)" % e)
            return False
        print("%s in %s: %s %d of %d%s, %s kept" % (
            why, state, "soft reset" if soft else "reset", count, limit,
            " and the last" if count > limit else "",
            kept[0] if kept else "no outcome"))  # fmt: skip
        return self.reset_now(soft or self.system.reboot)

    def reset_now(self, reset):
        """End this VM with `reset` (soft or not), the statuses sent since the boot drained
        to the broker first (lost without it): True."""
        try:
            self.channel.drain(3.0)
        except Exception as e:
            print("statuses not drained (%r)" % e)
        self.channel.stop()
        self.running = False
        reset()
        return True

    def park_idle(self):
        """With no job (IDLE) and nothing pending, the journey's modules leave the heap as
        during a parked step (agent/mpy/park.py): an idle board holds the loop, MQTT and its
        state only. The journal holds the IDLE journey (every transition saved it)."""
        journey = self.journey  # None: the journal could not be read back (recover())
        if (not self.parking or journey is None or _inbox(journey) is not None
                or journey.state != IDLE
                or self.events or self.resume_at is not None or self.deferred):  # fmt: skip
            return
        del journey  # no name may hold it while park() collects
        _park().park(self, idle=True)
        phases.drop(("agent.mpy.park",))  # no phase drops it here; unpark() frees it whole
        if self.inventory_due is not None:
            self.publish_inventory()

    def unpark(self):
        """The journey parked while idle, back from the journal (a job or cancel arrived):
        True; False while a step runs parked, or if the heap could not take it (recover():
        resume() reads the journal and handles the inbox later)."""
        journey = self.journey
        if not journey.idle:
            return False
        try:
            self.journey = self.journal.load(self.trial_policy())
        except Exception as e:  # a MemoryError resets for the heap there (restart_for)
            self.recover(e)
            return False
        self.handle_inbox(journey.inbox)  # none: each arrival unparks; kept for safety
        self.log_heap("unparked")
        return True

    def defer(self, kind, payload):
        """A job or cancel ("job", "cancel") arriving while the board idles parked, or while
        earlier ones wait and no step runs (their order is kept; the step's inbox hands its
        messages here after the step): written to the inbox file on flash and taken
        by the next turn (take_deferred), not here. Here the MQTT client's receive and the
        parsed message are live, and the journey read back next to them found no room at
        96K-98K; by the next turn they are gone. The file, not RAM, holds it because the
        client acknowledges the message (PUBACK) when this callback returns: a power cut
        before the journal took the job must not lose it. True when deferred."""
        journey = self.journey
        parked = _inbox(journey) is not None
        if not (parked and journey.idle) and not (self.deferred and not parked):
            return False  # during a parked step its inbox takes it (a cancel ends the step)
        try:
            with open(self.inbox_path, "a") as f:
                f.write(kind + " " + dumps(payload) + "\n")
        except OSError as e:  # a full or broken filesystem: handled here, as before
            print("inbox not written (%r)" % e)
            return False
        self.deferred = True
        return True

    def take_deferred(self):
        """The jobs and cancels defer() kept, in their order, with the journey read back from
        the journal first (the heap then holds neither the MQTT receive nor a parsed message).
        If the journey cannot come back, recover() and resume() load it and the next turn
        takes them. The inbox is renamed to inbox.taken and handled from there (what arrives
        meanwhile is handled at once, or in the journey's inbox during a step); that file goes
        once they are handled: a power cut before leaves them to the next boot (before the
        newer inbox), whose journey ignores a job it took already (its job memory is the
        journal's). A MemoryError leaves them for the turn after the resume; any other error
        drops them (as an error in the MQTT callback did)."""
        import os

        if _inbox(self.journey) is not None:
            import gc

            gc.collect()
            self.log_heap("deferred")
            if not self.unpark():
                return
        taken = self.inbox_path + ".taken"
        if not _exists(taken):  # else left by a power cut: older than the inbox, taken first
            os.rename(self.inbox_path, taken)
        self.deferred = _exists(self.inbox_path)
        with open(taken) as f:
            lines = f.read().split("\n")
        try:
            for line in lines:
                kind, _, text = line.partition(" ")
                try:
                    payload = json.loads(text)
                except ValueError:  # empty, or the line a power cut tore (never acknowledged)
                    continue
                (self._job if kind == "job" else self._cancel)(payload)
        except MemoryError:
            self.deferred = True  # taken at the next boot (restart_for), or the next turn
            raise
        except Exception:
            _remove(taken)
            raise
        _remove(taken)

    def handle_inbox(self, inbox):
        """The jobs and cancels that came while the journey was parked, in their order."""
        for kind, payload in inbox:
            (self.on_job if kind == "job" else self.on_cancel)(payload)

    def poller(self):
        """poll() for a step's I/O loops: MQTT keeps flowing; Abandoned after a cancel;
        DeadlinePassed once the job's deadline passed while it downloads, verifies or
        installs (as on Linux; an Installed job waits for its reboot past it)."""
        step = self.step
        journey = self.journey
        if _inbox(journey) is None:  # not parked
            deadline, status = self.transfer_bounds()
        else:
            deadline, status = journey.deadline, journey.status

        def poll():
            self.channel.poll()
            if self.step != step:
                raise Abandoned()
            if deadline is not None and time.time() >= deadline:
                what = (journey.job.id, status)
                raise _steps().DeadlinePassed("job %s: its deadline passed while %s" % what)

        return poll

    def transfer_bounds(self):
        """(the deadline that stops the journey's running step, or None; the status it runs
        in): the job's deadline while it downloads, verifies or installs."""
        from agent.core import lifecycle as lc

        journey = self.journey
        # States whose step the job's deadline stops (agent/control/daemon.py does the same).
        if journey.job is None or journey.state not in (lc.DOWNLOADING, lc.DOWNLOADED,
                                                        lc.INSTALLING):  # fmt: skip
            return None, None
        return journey.job.deadline, lc.status_of(journey.state)

    def wait(self, seconds, step):
        """Sleep `seconds` while polling MQTT; Abandoned when the journey moved on."""
        end = time.time() + seconds
        while True:
            self.channel.poll()
            if self.step != step:
                raise Abandoned()
            if time.time() >= end:
                return True
            time.sleep(0.01)

    def phase(self, name):
        return Phase(name)

    def trial_policy(self):
        from agent.core.trial import TrialPolicy

        trial = self.cfg.get("trial", {})
        return TrialPolicy(int(trial.get("window_s", 600)), trial.get("checks", list(CHECKS)))

    def timeout(self):
        return float(self.cfg.get("download", {}).get("timeout_s", 10))

    def max_time(self):
        """A transfer's bound (download max_time_s, as on Linux: 6 hours unless set; 0: none)."""
        value = float(self.cfg.get("download", {}).get("max_time_s", MAX_TIME_S))
        if value < 0:
            raise ConfigError("download max_time_s is %g: give 0 (no bound) or seconds" % value)
        return value

    def download_tls(self):
        """The TLS context for https downloads (None when no download ca_file is set), made
        at the first https request and kept: the install's connection then needs no 3 KiB in
        one piece from a heap the job has fragmented (agent/mpy/tls.py)."""
        if self._download_tls is None and self.cfg.get("download", {}).get("ca_file"):
            from agent.mpy import tls

            self._download_tls = tls.context(self.cfg["download"], "download")
        return self._download_tls

    # -- reporting --------------------------------------------------------------------------

    def report(self, status, info, on_ack=None):
        message = dict(info)
        message["status"] = status
        message["seq"] = self.board.next_seq()  # saved before it is published
        message["ts"] = int(time.time())
        print("status %s %s" % (status, dumps(info)))
        self.channel.publish(STATUS, message, on_ack=on_ack)
        return message

    def inventory_row(self):
        slots = self.board.slots()["slots"]
        history = self.board.history()
        rows = {}
        for name in self.boot.slots():
            record = slots.get(name, {})
            bootable = record.get("state") not in ("bad", "writing")
            rows[name] = {"version": record.get("version"), "state": record.get("state"),
                          "attempts_left": 1 if bootable else 0}  # fmt: skip
        d = self.device
        return {
            "device_id": d["id"], "model": d["model"],
            "hardware_revision": d["hardware_revision"], "group": d.get("group", ""),
            "site": d.get("site", ""), "site_type": d.get("site_type", ""),
            "backend": self.boot.name,
            "booted": self.boot.booted_slot(), "primary": self.boot.primary_slot(),
            "slots": rows, "last_job": history.get("last_job"),
            "rollbacks": history.get("rollbacks", []), "ts": int(time.time()),
        }  # fmt: skip

    def publish_inventory(self):
        self.inventory_due = None
        try:
            self.channel.publish(INVENTORY, self.inventory_row(), retain=True)
        except Exception as e:  # a corrupt state file must not stop the agent
            print("inventory not built: %r" % e)
            if isinstance(e, MemoryError):  # the heap (at 98K after a commit, 108K at start):
                self.inventory_due = time.time() + RECOVER_S  # again then, or once parked


def heap_resets(cfg):
    """[install] heap_resets: resets for a split heap in a row at one state of one job."""
    return int(cfg.get("install", {}).get("heap_resets", HEAP_RESETS))


def _verdict_kept(trust):
    """Whether the verify step's verdict is on flash for the install's check (signed.py);
    without it that check verifies the root too, so the boot had better verify it first."""
    rotated = getattr(trust, "rotated_path", None)
    if not rotated:
        return False
    from agent.mpy import signed

    try:
        return _exists(signed.path(rotated))
    finally:
        phases.drop(("agent.mpy.signed",))


def _exists(path):
    import os

    try:
        os.stat(path)
    except OSError:
        return False
    return True


def _remove(path):
    import os

    try:
        os.remove(path)
    except OSError:
        pass


def _urandom_float():
    import os

    return int.from_bytes(os.urandom(4), "big") / 4294967296.0


def load_config(path):
    with open(path) as f:
        return json.load(f)
