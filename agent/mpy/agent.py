"""The agent on a MicroPython board: the Linux daemon's loop (agent/control/daemon.py) without
threads. One loop owns the journey (agent/core/journey.py, shared and unchanged): it polls
MQTT, executes the journey's actions in order and feeds results back as events. Long steps
(download, verify, install, checks) run inline but poll MQTT between blocks, so keep-alives,
cancels and status acknowledgements keep flowing; a cancel abandons the running step.

Invariant: every decision is the journey's; a failure of a step becomes the event that fits it
(with the error's reason), never an exception out of the loop; nothing is reported before the
journal saved the state it belongs to.
"""

import json
import time

from agent.core import lifecycle as lc
from agent.core.errors import BadSignature, ReadbackMismatch, Rejected, UnknownKey, UpdateError
from agent.core.jobs import check_version, job_id_of, parse_job
from agent.core.trial import TrialPolicy
from agent.mpy import checks, installer
from agent.mpy.channel import CANCEL, HEALTH, INVENTORY, JOB, PONG, STATUS
from agent.mpy.jsonout import dumps
from agent.mpy.store import Board, Journal

SIGNATURE_ERRORS = (BadSignature, UnknownKey)


def esp32_boot_facts(machine):
    """Journey.resume's boot facts from MicroPython's machine.reset_cause() on an ESP32: only
    a power-on (or brown-out) and a watchdog name a cause; MicroPython folds the rest (a
    panic among them, as far as its port says) into codes that could also be machine.reset(),
    so they stay "unknown" rather than a guess (agent/core/resets.py)."""
    cause = machine.reset_cause()
    if cause == machine.PWRON_RESET:
        return {"reset": "power-on"}
    if cause == machine.WDT_RESET:
        return {"reset": "watchdog"}
    return {"reset": "unknown"}


class Abandoned(Exception):
    """The step's journey moved on (cancel): its result belongs to nobody."""


def _info(error):
    return {"reason": error.reason, "detail": error.message, "transient": bool(error.retry)}


class Agent:
    """cfg: the board's agent.json (dict); boot: agent.mpy.ota.OtaBoot; channel: Channel;
    stack: the charging firmware's callback object; trust: agent.mpy.trust.Trust;
    system: reboot(), local_offset_s() and optionally boot_facts() (esp32_boot_facts)."""

    def __init__(self, cfg, boot, channel, stack, trust, system, after_save=None, rng=None):
        self.cfg, self.boot, self.channel, self.stack = cfg, boot, channel, stack
        self.trust, self.system = trust, system
        self.device = cfg["device"]
        trial = cfg.get("trial", {})
        self.policy = TrialPolicy(int(trial.get("window_s", 600)),
                                  trial.get("checks", list(checks.CHECKS)))  # fmt: skip
        # A job may add checks this board has; anything else is refused as malformed-job.
        self.job_checks = sorted(set(self.policy.required_checks) | set(checks.FUNCTIONS))
        state_dir = cfg.get("state_dir", "data")
        self.journal = Journal(state_dir + "/journal.json", after_save)
        self.board = Board(state_dir)
        self.events = []
        self.step = 0
        self.envelope = None
        self.wake_at = 0
        self.running = True
        self.rng = rng or _urandom_float
        channel.on_error = self.on_channel_error
        channel.version = cfg.get("firmware_version")

    # -- life cycle -------------------------------------------------------------------------

    def start(self):
        self.channel.subscribe(JOB, self.on_job)
        self.channel.subscribe(CANCEL, self.on_cancel)
        self.channel.subscribe(PONG, self.channel.on_pong)
        self.channel.poll()
        self.resume()
        unsent = self.board.history().get("final")
        if unsent:  # the last final status was never acknowledged: send it again
            self.channel.publish(STATUS, unsent, on_ack=self.board.final_delivered)
        self.publish_inventory()

    def run(self):
        self.start()
        seen = self.channel.connections
        while self.running:
            self.turn()
            if self.channel.connections != seen:  # a new connection: republish the row
                seen = self.channel.connections
                self.publish_inventory()
            time.sleep(0.02)

    def turn(self):
        self.channel.poll()
        while self.events:
            event = self.events.pop(0)
            if event[0] == self.step:
                self.execute(self.journey.handle(event[1], time.time(), event[2])[1])
        self.tick()

    def resume(self):
        self.journey = self.journal.load(self.policy)
        if self.journal.problem:
            print(self.journal.problem)
        booted = self.boot.booted_slot()
        facts = self.system.boot_facts() if hasattr(self.system, "boot_facts") else None
        print("booted slot %s; journal state %s; boot %s" % (booted, self.journey.state, facts))
        # The reset cause tells a power loss that ended the trial from a crash (the cause
        # of the RolledBack), though ESP-IDF falls back on either.
        self.execute(self.journey.resume(booted, time.time(), facts)[1])
        state = self.journey.state
        if state in (lc.IDLE, lc.COMMITTED) or (
            lc.is_terminal(state) and booted != self.journey.data.get("new_slot")
        ):
            self.boot.mark_good(booted)  # a healthy boot of a confirmed slot: idempotent

    # -- inputs -----------------------------------------------------------------------------

    def on_job(self, payload):
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
        before = self.journey.state
        actions = self.journey.cancel(str(payload.get("job_id") or payload.get("id")),
                                      time.time())[1]  # fmt: skip
        if self.journey.state != before:
            self.step += 1  # a download still running is moot now
            self.wake_at = 0
        self.execute(actions)

    def on_channel_error(self, suffix, reason, detail):
        if suffix in (JOB, CANCEL):
            self.report("Idle", {"job_id": None, "reason": "malformed-job",
                                 "detail": "%s: %s" % (reason, detail)})  # fmt: skip

    def tick(self):
        state = self.journey.state
        if state == lc.IDLE:
            return
        if lc.is_terminal(state):
            self.wake_at = 0
            self.execute(self.journey.finish(time.time())[1])
            return
        if time.time() < self.wake_at:
            return
        active = state in (lc.INSTALL_SCHEDULED, lc.INSTALLED) and self._session_active()
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
        for action in actions:
            getattr(self, "do_" + action[0])(*action[1:])

    def do_save_journal(self):
        self.journal.save(self.journey)

    def do_report(self, status, info):
        if status not in lc.FINAL_STATUSES:
            self.report(status, info)
            return
        # A journey's last status survives a power cut: kept on flash until acknowledged.
        message = self.report(status, info, on_ack=self.board.final_delivered)
        self.board.record_result(info.get("job_id"), status, info, message)
        self.publish_inventory()

    def do_wait(self, until, why):
        self.wake_at = until

    def do_ignore(self, job_id, reason):
        print("ignoring job %s: %s" % (job_id, reason))

    def do_reject(self, job_id, reason):
        self.report("Idle", {"job_id": job_id, "reason": "rejected", "detail": reason})

    def do_try_slot(self, slot):
        self.boot.try_slot(slot)

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

    def do_record_baseline(self):
        try:
            self.journey.set_baseline(checks.baseline(self.stack))
        except Exception as e:
            print("no alarm baseline (%r); the trial compares with an empty one" % e)
            self.journey.set_baseline({"codes": [], "rate_per_hour": 0.0})

    def do_download(self):
        self._run_step(self._download, lc.DOWNLOAD_ERROR)

    def do_verify(self):
        self._run_step(self._verify, lc.DOWNLOAD_ERROR)

    def do_install(self, slot):
        self._run_step(lambda: self._install(slot), lc.INSTALL_ERROR)

    def do_run_checks(self):
        step = self.step
        try:
            results = self._run_checks(step)
        except Abandoned:
            return
        self.execute(self.journey.check_results(results, time.time())[1])

    # -- steps ------------------------------------------------------------------------------

    def _run_step(self, fn, failure):
        """Run a long step inline; its result event is queued for the loop (no recursion)."""
        self.step += 1
        step = self.step
        try:
            event, info = fn()
        except Abandoned:
            return
        except UpdateError as e:
            event, info = failure, _info(e)
        except MemoryError:  # the heap was too fragmented for a buffer: retried after a GC
            import gc

            gc.collect()
            event, info = failure, {"reason": "no-memory", "detail": "heap exhausted",
                                    "transient": True}  # fmt: skip
        except Exception as e:  # a bug must not kill the agent: the step fails
            event, info = failure, {"reason": "internal", "detail": repr(e)}
        self.events.append((step, event, info))

    def _poller(self):
        step = self.step

        def poll():
            self.channel.poll()
            if self.step != step:
                raise Abandoned()

        return poll

    def _download(self):
        job = self.journey.job
        self.envelope = installer.fetch_header(job.url, self._timeout(), self._poller())
        return lc.DOWNLOAD_OK, {}

    def _verify(self):
        job = self.journey.job
        try:
            if self.envelope is None:  # resumed at Downloaded: fetch the header again
                self.envelope = installer.fetch_header(job.url, self._timeout(), self._poller())
            manifest = self.trust.verify(self.envelope, self.device, self.board.floor(),
                                         time.time())  # fmt: skip
            check_version(job.version, manifest.version)
        except Rejected as e:
            return lc.SIGNATURE_BAD, _info(e)
        return lc.SIGNATURE_OK, {}

    def _install(self, slot):
        job = self.journey.job
        self.board.set_slot(slot, {"state": "writing", "incoming": job.version})
        marks = [10]

        def progress(done, total):
            percent = done * 100 // max(total, 1)
            if percent >= marks[0]:
                marks[0] = percent // 10 * 10 + 10
                self.report("Installing", {"job_id": job.id, "version": job.version,
                                           "progress": percent})  # fmt: skip

        try:
            manifest = installer.install(
                job.url, self.trust, self.device, self.board.floor(), time.time(),
                self.boot.partition(slot), self.cfg.get("slot_class", "app"), self._timeout(),
                progress, self._poller(), job.version,
            )  # fmt: skip
        except SIGNATURE_ERRORS as e:
            return lc.SIGNATURE_BAD, _info(e)
        except ReadbackMismatch as e:
            return lc.VERIFY_ERROR, _info(e)
        self.board.set_slot(slot, {"state": "installed", "version": manifest.version,
                                   "security_version": manifest.security_version})  # fmt: skip
        return lc.INSTALL_OK, {}

    def _run_checks(self, step):
        job = self.journey.job
        data = self.journey.data

        def wait(seconds):
            end = time.time() + seconds
            while True:
                self.channel.poll()
                if self.step != step:
                    raise Abandoned()
                if time.time() >= end:
                    return True
                time.sleep(0.01)

        ctx = checks.Context(self.cfg.get("trial", {}), self.channel, self.stack,
                             data.get("baseline"), wait)  # fmt: skip

        def reported(name, passed, evidence):
            self.report("TrialRunning", {"job_id": job.id, "version": job.version,
                                         "check": name, "passed": passed,
                                         "evidence": evidence})  # fmt: skip

        results = checks.run(self.journey.policy().required_checks, ctx, reported)
        verdict = "pass" if all(r[0] for r in results.values()) else "fail"
        self.channel.publish(HEALTH, {
            "job_id": job.id, "phase": "trial", "slot": data.get("new_slot"), "verdict": verdict,
            "checks": [{"name": n, "passed": bool(r[0]), "evidence": r[1]}
                       for n, r in results.items()],
            "ts": int(time.time()),
        })  # fmt: skip
        return results

    def _timeout(self):
        return float(self.cfg.get("download", {}).get("timeout_s", 10))

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
            "site_type": d.get("site_type", ""), "backend": self.boot.name,
            "booted": self.boot.booted_slot(), "primary": self.boot.primary_slot(),
            "slots": rows, "last_job": history.get("last_job"),
            "rollbacks": history.get("rollbacks", []), "ts": int(time.time()),
        }  # fmt: skip

    def publish_inventory(self):
        try:
            self.channel.publish(INVENTORY, self.inventory_row(), retain=True)
        except Exception as e:  # a corrupt state file must not stop the agent
            print("inventory not built: %r" % e)


def _urandom_float():
    import os

    return int.from_bytes(os.urandom(4), "big") / 4294967296.0


def load_config(path):
    with open(path) as f:
        return json.load(f)
