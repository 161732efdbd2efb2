"""A reset for a split heap on the MicroPython agent (agent/mpy/agent.py heap_reset), on
CPython with stand-ins for the board: when the journey cannot be read back after a parked
step (at 96K-100K the download leaves 30-35 KiB free with no 600 bytes in one piece), the
step's outcome, its state and job and what arrived meanwhile go to flash and the board
resets; the next boot hands the outcome to the journey read back from the journal, once.
At most HEAP_RESETS in a row at one state of one job, then recover() as before."""

import builtins
import json
import os

import pytest

from agent.core import lifecycle as lc
from agent.core.jobs import JobMemory, parse_job
from agent.core.journey import Journey
from agent.mpy import heapreset, phase, steps
from agent.mpy.agent import HEAP_RESETS, Agent
from tests.micropython.test_mpy_recover import DEVICE, T0, Boot, Channel

JOB = {"id": "job-1", "url": "http://fw/x", "version": "2.0"}


class Board(Channel):
    """The channel and the system of one boot: a reset ends it."""

    def __init__(self):
        super().__init__()
        self.resets = 0

    def poll(self):
        pass

    def subscribe(self, suffix, handler):
        pass

    on_pong = None

    def stop(self):
        pass

    def drain(self, seconds):
        pass

    def reboot(self):
        self.resets += 1

    def local_offset_s(self):
        return 0


def _boot(tmp_path):
    board = Board()
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, Boot(), board, None, None,
                  board)  # fmt: skip
    return agent, board


def _downloading(agent):
    journey = Journey(JobMemory())
    journey.offer(parse_job(json.dumps(JOB).encode(), DEVICE), T0, "ota_0", "ota_1", 0.5)
    journey.handle(lc.TIME_REACHED, T0)
    assert journey.state == lc.DOWNLOADING
    agent.journal.save(journey)  # the journey saves before every step it starts
    agent.journey = journey


def _split_heap(agent, monkeypatch):
    """The journal read back after the step finds no room, as at 96K-100K."""

    def load(policy):
        raise MemoryError("memory allocation failed, allocating 592 bytes")

    monkeypatch.setattr(agent.journal, "load", load)


def _record(tmp_path):
    with open(tmp_path / "heap-reset.json") as f:
        return json.load(f)


def _installed_after_a_reset(tmp_path, monkeypatch, *more):
    """A journal INSTALLED (then `more` events), left by a job whose install step was
    followed by a reset for the heap: what the next boot finds."""
    agent, _ = _boot(tmp_path)
    _downloading(agent)
    journey = agent.journey
    for event in (lc.DOWNLOAD_OK, lc.SIGNATURE_OK, lc.TIME_REACHED, lc.INSTALL_OK) + more:
        journey.handle(event, T0)
    agent.journal.save(journey)
    _split_heap(agent, monkeypatch)
    assert agent.heap_reset(lc.INSTALLING, journey.job.id, None, ())
    monkeypatch.undo()
    return journey


@pytest.fixture(autouse=True)
def _keep_modules(monkeypatch):
    monkeypatch.setattr(phase, "drop", lambda names: None)  # this process keeps its modules


def test_the_outcome_of_a_step_survives_a_reset_for_the_heap(tmp_path, monkeypatch):
    agent, board = _boot(tmp_path)
    _downloading(agent)

    def download(agent):
        agent.journey.inbox.append(("cancel", {"job_id": "job-0"}))  # arrived meanwhile
        return lc.DOWNLOAD_OK, {}

    monkeypatch.setattr(steps, "download", download)
    _split_heap(agent, monkeypatch)
    agent.do_download()
    assert board.resets == 1 and not agent.running
    assert _record(tmp_path) == {"state": lc.DOWNLOADING, "job_id": "job-1", "count": 1,
                                 "outcome": [lc.DOWNLOAD_OK, {}]}  # fmt: skip
    with open(tmp_path / "inbox.txt") as f:
        assert f.read().split(" ", 1)[0] == "cancel"

    agent, board = _boot(tmp_path)  # the next boot
    assert agent.deferred  # the cancel waits in the inbox file
    verified = []
    monkeypatch.setattr(steps, "verify", lambda agent: verified.append(agent.journey.state)
                        or (lc.SIGNATURE_OK, {}))  # fmt: skip
    agent.start()
    assert [m["status"] for m in board.sent] == ["Downloaded"]  # the outcome, taken at boot
    assert _record(tmp_path)["outcome"] is None  # once
    assert agent.held == [("verify",)] and verified == []  # after the connection
    assert agent.journey.inbox == [] and agent.journey.state == lc.DOWNLOADED  # parked
    agent.tick = lambda: None  # only the held step and what it leads to
    agent.turn()
    assert verified == [lc.DOWNLOADED]  # the outcome took the journey on: no second download
    # A passed verify step ends its VM, its outcome kept: the install gets a VM of its own.
    assert board.resets == 1 and not agent.running
    assert _record(tmp_path)["outcome"] == [lc.SIGNATURE_OK, {}]

    agent, board = _boot(tmp_path)
    agent.start()
    assert not agent.deferred  # the cancel of another job was taken (and ignored)
    assert agent.journey.state == lc.INSTALL_SCHEDULED  # the verdict taken at boot
    assert [m["status"] for m in board.sent][:2] == ["SignatureVerified", "InstallScheduled"]
    assert verified == [lc.DOWNLOADED]  # not verified again

    again, _ = _boot(tmp_path)  # a power cut after the outcome was taken: as any other cut
    again.start()
    assert again.held is None and again.journey.state == lc.INSTALL_SCHEDULED


class Prepared:
    """A trust store that counts the root's checks at boot (Trust.prepare, Agent.start)."""

    def __init__(self, rotated_path):
        self.rotated_path = rotated_path
        self.prepared = 0

    def prepare(self):
        self.prepared += 1


@pytest.mark.parametrize("verdict", [True, False], ids=["verdict-kept", "no-verdict"])
def test_the_installs_vm_checks_the_root_at_boot_only_without_a_kept_verdict(
    tmp_path, monkeypatch, verdict
):
    # The install's check takes the verify step's kept verdict (signed.json beside the
    # rotated root) and verifies no root then; without one it verifies the root too, which
    # had better happen at boot, while the heap is young.
    agent, board = _boot(tmp_path)
    _downloading(agent)
    agent.journey.handle(lc.DOWNLOAD_OK, T0)
    agent.journal.save(agent.journey)
    monkeypatch.setattr(steps, "verify", lambda agent: (lc.SIGNATURE_OK, {}))
    agent.do_verify()
    assert board.resets == 1  # a fresh VM for the install
    if verdict:
        with open(tmp_path / "signed.json", "w") as f:
            json.dump({"signed": "0" * 64}, f)

    class Marks(Boot):  # the install's first action: the slot it writes is marked bad
        def mark_bad(self, slot, confirmed=False):
            pass

    board = Board()  # the install's VM
    trust = Prepared(str(tmp_path / "rotated.json"))
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, Marks(), board, Idle(), trust,
                  board)  # fmt: skip
    agent.start()
    assert agent.held and agent.held[0][0] == "install"
    assert agent.trust.prepared == (0 if verdict else 1)


def test_a_step_that_cannot_park_resets_and_runs_again(tmp_path, monkeypatch):
    agent, board = _boot(tmp_path)
    _downloading(agent)
    from agent.mpy import park

    def no_room(agent, **kw):
        raise MemoryError("memory allocation failed, allocating 464 bytes")

    monkeypatch.setattr(park, "park", no_room)
    agent.do_download()
    assert board.resets == 1 and _record(tmp_path)["outcome"] is None
    monkeypatch.undo()
    agent, board = _boot(tmp_path)
    agent.start()  # as after a power cut: no retry spent, no backoff, the download held
    assert agent.held == [("download",)]
    assert [m["status"] for m in board.sent] == ["DownloadScheduled", "Downloading"]


def test_without_an_outcome_the_boot_resumes_as_after_a_cut(tmp_path, monkeypatch):
    agent, board = _boot(tmp_path)
    _downloading(agent)
    agent.journey.handle(lc.DOWNLOAD_OK, T0)
    agent.journal.save(agent.journey)
    _split_heap(agent, monkeypatch)
    monkeypatch.setattr(steps, "verify", lambda agent: 1 / 0)  # verify has no failure event
    agent.do_verify()
    assert board.resets == 1 and _record(tmp_path)["outcome"] is None
    agent, board = _boot(tmp_path)
    agent.start()
    assert agent.held == [("verify",)]  # verify again, after the connection
    assert [m["status"] for m in board.sent] == ["Downloaded"]


def test_after_the_slot_switch_no_reset(tmp_path, monkeypatch):
    agent, board = _boot(tmp_path)
    _downloading(agent)
    _split_heap(agent, monkeypatch)
    assert not agent.heap_reset(lc.TRIAL, "job-1", (lc.CHECKS_PASSED, {}), ())
    assert board.resets == 0 and not os.path.exists(tmp_path / "heap-reset.json")


def test_resets_in_a_row_at_one_state_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "download", lambda agent: (lc.DOWNLOAD_OK, {}))
    for n in range(1, HEAP_RESETS + 3):
        agent, board = _boot(tmp_path)
        _downloading(agent)
        _split_heap(agent, monkeypatch)
        agent.do_download()
        if n <= HEAP_RESETS:
            assert board.resets == 1 and _record(tmp_path)["count"] == n
            assert "final" not in _record(tmp_path)
        if n == HEAP_RESETS + 1:  # once more, for the step's outcome (the next test)
            assert board.resets == 1 and _record(tmp_path)["final"] is True
    assert board.resets == 0 and agent.running  # then recover() as before
    assert agent.resume_at is not None
    assert board.sent[-1]["reason"] == "no-memory"


def test_the_journeys_end_clears_the_count(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "download", lambda agent: (lc.DOWNLOAD_OK, {}))
    agent, board = _boot(tmp_path)
    _downloading(agent)
    _split_heap(agent, monkeypatch)
    agent.do_download()
    assert os.path.exists(tmp_path / "heap-reset.json")
    agent, _ = _boot(tmp_path)
    agent.do_cleanup()  # the last action of every journey's end
    assert not os.path.exists(tmp_path / "heap-reset.json")


def test_heap_resets_zero_turns_them_off(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "download", lambda agent: (lc.DOWNLOAD_OK, {}))
    board = Board()
    cfg = {"device": DEVICE, "state_dir": str(tmp_path), "install": {"heap_resets": 0}}
    agent = Agent(cfg, Boot(), board, None, None, board)
    _downloading(agent)
    _split_heap(agent, monkeypatch)
    agent.do_download()
    assert board.resets == 0 and agent.resume_at is not None


def test_a_job_the_heap_could_not_take_is_taken_at_the_next_boot(tmp_path, monkeypatch):
    agent, board = _boot(tmp_path)
    agent.resume(first=True)
    agent.park_idle()
    agent.on_job(JOB)  # written to the inbox file, acknowledged when the callback returns

    def no_room(payload):
        raise MemoryError("memory allocation failed, allocating 368 bytes")

    monkeypatch.setattr(agent, "_job", no_room)
    agent.tick = lambda: None
    with pytest.raises(MemoryError) as e:
        agent.turn()
    agent.recover(e.value)  # as run() does
    assert board.resets == 1 and _record(tmp_path)["state"] == lc.IDLE
    assert os.path.exists(tmp_path / "inbox.txt.taken")  # the job, still on flash

    agent, board = _boot(tmp_path)
    agent.start()  # taken before the connection, the download held for it, parked
    assert agent.held == [("download",)]
    assert agent.journey.state == lc.DOWNLOADING and agent.journey.job.id == "job-1"
    assert [m["status"] for m in board.sent] == ["DownloadScheduled", "Downloading"]
    assert not agent.deferred and not os.path.exists(tmp_path / "inbox.txt.taken")


def test_a_step_that_runs_out_of_heap_runs_again_after_a_reset(tmp_path, monkeypatch):
    agent, board = _boot(tmp_path)
    _downloading(agent)

    def no_room(agent):
        agent.journey.inbox.append(("cancel", {"job_id": "job-0"}))  # arrived meanwhile
        raise MemoryError("memory allocation failed, allocating 1024 bytes")

    monkeypatch.setattr(steps, "download", no_room)
    agent.do_download()
    assert board.resets == 1 and _record(tmp_path)["outcome"] is None  # no retry spent
    with open(tmp_path / "inbox.txt") as f:
        assert f.read().startswith("cancel ")
    monkeypatch.undo()
    for n in range(2, HEAP_RESETS + 1):  # the same state again: counted
        agent, board = _boot(tmp_path)
        _downloading(agent)
        monkeypatch.setattr(steps, "download", no_room)
        agent.do_download()
        assert board.resets == 1 and _record(tmp_path)["count"] == n
    agent, board = _boot(tmp_path)
    _downloading(agent)
    agent.do_download()  # past the bound: the failure event, a retry as before
    assert board.resets == 0 and agent.events[-1][1] == lc.DOWNLOAD_ERROR
    assert agent.events[-1][2]["reason"] == "no-memory"


def test_a_failure_no_read_back_takes_after_the_resets_ends_the_job(tmp_path, monkeypatch):
    # At 96K the step ran out of heap in every VM, and past the resets the read-back after it
    # failed too: its failure event never reached the journey, and the board reported
    # no-memory every 10 s for good. Now one more reset keeps that failure, not transient (a
    # retry meets the same wall), and the next boot ends the job with it.
    def no_room(agent):
        raise MemoryError("memory allocation failed, allocating 66 bytes")

    monkeypatch.setattr(steps, "download", no_room)
    for _ in range(HEAP_RESETS):
        agent, board = _boot(tmp_path)
        _downloading(agent)
        agent.do_download()
        assert board.resets == 1
    agent, board = _boot(tmp_path)
    _downloading(agent)
    _split_heap(agent, monkeypatch)
    agent.do_download()
    assert board.resets == 1
    record = _record(tmp_path)
    assert record["final"] is True and record["outcome"][0] == lc.DOWNLOAD_ERROR
    assert record["outcome"][1]["reason"] == "no-memory"
    assert record["outcome"][1]["transient"] is False
    monkeypatch.undo()

    agent, board = _boot(tmp_path)
    agent.start()
    final = [m for m in board.sent if m["status"] == "DownloadFailed"]
    assert len(final) == 1 and final[0]["reason"] == "no-memory", board.sent
    assert agent.journey.state == lc.IDLE and not os.path.exists(tmp_path / "heap-reset.json")

    # Once: a VM that cannot take it either leaves it to recover() as before (no reset loop).
    with open(tmp_path / "heap-reset.json", "w") as f:
        json.dump(dict(record, outcome=None), f)
    assert not agent.heap_reset(lc.DOWNLOADING, "job-1", [lc.DOWNLOAD_ERROR, {}], (), True)
    assert board.resets == 0


def test_a_verify_step_past_its_resets_fails_as_a_download(tmp_path, monkeypatch):
    # The verify step has no failure edge of its own for the heap: past the resets its
    # MemoryError is DOWNLOAD_ERROR (fetched and verified again while retries last), not a
    # recover() that runs it again every 10 s for good.
    def no_room(agent):
        raise MemoryError("memory allocation failed, allocating 66 bytes")

    monkeypatch.setattr(steps, "verify", no_room)
    for n in range(HEAP_RESETS + 1):
        agent, board = _boot(tmp_path)
        _downloading(agent)
        agent.journey.handle(lc.DOWNLOAD_OK, T0)
        agent.journal.save(agent.journey)
        agent.do_verify()
        assert board.resets == (1 if n < HEAP_RESETS else 0)
    assert agent.events[-1][1] == lc.DOWNLOAD_ERROR and agent.resume_at is None
    assert agent.events[-1][2]["reason"] == "no-memory"


class NoRoomToArm(Boot):
    """The emulated set_boot() validates the image on the app's heap: at 96K it met a
    MemoryError (ESP-IDF does this in C, and arms nothing when it fails)."""

    def try_slot(self, slot):
        raise MemoryError("memory allocation failed, allocating 513 bytes")


class Idle:
    def session_active(self):
        return False


def test_a_boot_after_a_heap_reset_that_cannot_arm_the_slot_recovers(tmp_path, monkeypatch):
    assert _installed_after_a_reset(tmp_path, monkeypatch).state == lc.INSTALLED
    board = Board()  # the next boot
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, NoRoomToArm(), board, Idle(),
                  None, board)  # fmt: skip
    agent.start()  # arming the slot waits for the connection, the journey parked
    assert [a[0] for a in agent.held] == ["try_slot", "save_record", "report", "reboot"]
    assert agent.held[1][2] == lc.REBOOTING and agent.journey.idle
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["state"] == lc.INSTALLED  # saved only once the slot is armed
    with pytest.raises(MemoryError):  # run() recovers (it crashed out of start() before,
        agent.turn()  # at 96K, and the board reset for good, its trial attempts used up)
    assert board.resets == 0
    assert agent.board.slots()["slots"]["ota_1"]["armed"] == 0  # no boot attempt used
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["state"] == lc.INSTALLED


def test_a_held_reboot_arms_saves_and_reports_in_order(tmp_path, monkeypatch):
    armed = []

    class Arms(Boot):
        def try_slot(self, slot):
            with open(tmp_path / "journal.json") as f:
                armed.append((slot, json.load(f)["state"]))

    _installed_after_a_reset(tmp_path, monkeypatch)
    board = Board()  # the next boot
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, Arms(), board, Idle(), None,
                  board)  # fmt: skip
    agent.start()
    agent.turn()
    assert armed == [("ota_1", lc.INSTALLED)] and board.resets == 1  # then the reboot
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["state"] == lc.REBOOTING
    assert board.sent[-1]["status"] == "InstallRebooting"


class OnTheNewSlot(Boot):
    def booted_slot(self):
        return "ota_1"

    def mark_good(self, slot):
        self.good = slot

    def mark_bad(self, slot, confirmed=False):
        self.bad = slot, confirmed


class SoftBoard(Board):
    """A board whose system has machine.soft_reset(): the VM starts again, the chip's boot
    (and the new slot's trial) goes on."""

    def __init__(self):
        super().__init__()
        self.soft_resets = 0

    def soft_reset(self):
        self.soft_resets += 1
        raise SystemExit  # as machine.soft_reset() does: the VM ends here

    def boot_facts(self):
        return {"reset": "agent-restart"}  # esp32_boot_facts after machine.soft_reset()


def _on_the_new_slot(tmp_path, board, boot):
    """The VM of a boot of the new slot, its journal REBOOTING or later."""
    return Agent({"device": DEVICE, "state_dir": str(tmp_path)}, boot, board, Idle(), None,
                 board)  # fmt: skip


def _a_vm_without_room(tmp_path, monkeypatch, board):
    """A VM of the new slot's boot whose first read-back of the journey finds no room: it
    ends in a reset of `board` (returned)."""
    agent = _on_the_new_slot(tmp_path, board, OnTheNewSlot())
    _split_heap(agent, monkeypatch)
    with pytest.raises(SystemExit):
        agent.start()
    monkeypatch.undo()
    return board


def _checks(monkeypatch, ran, failing=()):
    def checks(agent, step):
        ran.append(agent.journey.inbox)  # parked: a Parked has an inbox
        return {name: (name not in failing, {"seen": name})
                for name in agent.journey.required_checks}  # fmt: skip

    monkeypatch.setattr(steps, "run_checks", checks)


def test_the_new_slots_first_boot_after_heap_resets_holds_the_trial_parked(tmp_path, monkeypatch):
    # At 98K the connection left no room for the journey on that boot: it resumes first,
    # and the trial waits for the connection with the journey parked.
    journey = _installed_after_a_reset(tmp_path, monkeypatch, lc.TIME_REACHED)
    assert journey.state == lc.REBOOTING  # armed, saved after set_boot
    board, boot = Board(), OnTheNewSlot()
    agent = _on_the_new_slot(tmp_path, board, boot)
    ran = []
    _checks(monkeypatch, ran)
    agent.start()
    assert agent.held == [("run_checks",)] and ran == []
    assert agent.journey.inbox == [] and agent.journey.required_checks  # parked for it
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["state"] == lc.TRIAL
    agent.turn()  # connected: the trial runs, the journey comes back for its verdict
    assert ran == [[]] and boot.good == "ota_1"
    assert "Committed" in [m["status"] for m in board.sent]


def _trial_split_by_its_checks(tmp_path, monkeypatch, board, failing=()):
    """The new slot's VM after heap resets: the trial runs, and the journey's read-back after
    the checks finds no room. Returns the checks' runs."""
    _installed_after_a_reset(tmp_path, monkeypatch, lc.TIME_REACHED)
    agent = _on_the_new_slot(tmp_path, board, OnTheNewSlot())
    ran = []
    _checks(monkeypatch, ran, failing)
    agent.start()
    _split_heap(agent, monkeypatch)
    try:
        agent.turn()
    except SystemExit:  # the soft reset
        pass
    return agent, ran


def test_the_trials_results_survive_a_soft_reset_and_commit(tmp_path, monkeypatch):
    board = SoftBoard()
    agent, ran = _trial_split_by_its_checks(tmp_path, monkeypatch, board)
    assert board.soft_resets == 1 and board.resets == 0 and not agent.running
    record = _record(tmp_path)
    assert record["state"] == lc.TRIAL and record["count"] == 1
    assert record["outcome"][0] == "check-results"
    assert record["outcome"][1]["communication"] == [True, {"seen": "communication"}]
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["state"] == lc.TRIAL  # nothing confirmed yet

    board, boot = SoftBoard(), OnTheNewSlot()  # the next VM, in the same boot of the chip
    agent = _on_the_new_slot(tmp_path, board, boot)
    agent.start()  # the journey first, handed the results: the verdict, no second trial
    assert len(ran) == 1 and boot.good == "ota_1"
    assert [m["status"] for m in board.sent].count("Committed") == 1  # once, not resent
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["state"] == lc.IDLE
    assert not os.path.exists(tmp_path / "heap-reset.json")  # the journey's end


def test_results_not_taken_yet_survive_another_reset(tmp_path, monkeypatch):
    # The next VM cannot read the journey back either (96K): the results it did not take
    # stay kept for the VM after, which commits without a second trial.
    board = SoftBoard()
    _trial_split_by_its_checks(tmp_path, monkeypatch, board)
    kept = _record(tmp_path)["outcome"]
    assert _a_vm_without_room(tmp_path, monkeypatch, SoftBoard()).soft_resets == 1
    assert _record(tmp_path) == {"state": lc.TRIAL, "job_id": "job-1", "count": 2,
                                 "outcome": kept}  # fmt: skip
    ran = []
    _checks(monkeypatch, ran)
    board, boot = SoftBoard(), OnTheNewSlot()
    agent = _on_the_new_slot(tmp_path, board, boot)
    agent.start()
    assert ran == [] and boot.good == "ota_1"
    assert [m["status"] for m in board.sent].count("Committed") == 1


def test_failed_checks_kept_across_a_soft_reset_roll_back(tmp_path, monkeypatch):
    board = SoftBoard()
    _trial_split_by_its_checks(tmp_path, monkeypatch, board, failing=("charging-session",))
    assert board.soft_resets == 1
    board, boot = SoftBoard(), OnTheNewSlot()
    agent = _on_the_new_slot(tmp_path, board, boot)
    agent.start()
    assert not hasattr(boot, "good") and boot.bad == ("ota_1", False)  # never confirmed
    assert agent.held == [("reboot",)]  # the reset that ends the trial, after the connection
    with open(tmp_path / "journal.json") as f:
        record = json.load(f)
    assert record["state"] == lc.ROLLED_BACK
    agent.turn()
    assert board.resets == 1  # a hard reset: the bootloader aborts the unconfirmed slot


def test_without_a_soft_reset_the_trial_never_resets(tmp_path, monkeypatch):
    board = Board()  # machine.reset() only: a reset would end the new slot's trial boot
    with pytest.raises(MemoryError):  # run() recovers, as before
        _trial_split_by_its_checks(tmp_path, monkeypatch, board)
    assert board.resets == 0
    assert _record(tmp_path)["state"] == lc.INSTALLING  # the install's, untouched


def test_a_boot_with_no_room_for_the_journey_soft_resets_and_resumes_it_first(
    tmp_path, monkeypatch
):
    # A board whose install needed no reset: the new slot's boot, connected, cannot read its
    # journey back (98K); the next VM resumes it before the connection.
    journey = _installed_after_a_reset(tmp_path, monkeypatch, lc.TIME_REACHED)
    os.remove(tmp_path / "heap-reset.json")
    assert _a_vm_without_room(tmp_path, monkeypatch, SoftBoard()).soft_resets == 1
    assert _record(tmp_path) == {"state": lc.REBOOTING, "job_id": journey.job.id, "count": 1,
                                 "outcome": None}  # fmt: skip
    ran = []
    _checks(monkeypatch, ran)
    agent = _on_the_new_slot(tmp_path, SoftBoard(), OnTheNewSlot())
    agent.start()
    assert agent.held == [("run_checks",)] and agent.journey.inbox == []


class PoweredOn(SoftBoard):
    """The first VM of a boot of the chip after a power loss."""

    def boot_facts(self):
        return {"reset": "power-on"}


def test_a_boots_cause_no_journey_took_reaches_the_vm_after_the_reset(tmp_path, monkeypatch):
    # The first VM of a boot after a power loss cannot read its journey back (at 96K on the
    # old slot, the trial lost with the power): the VM after reads SOFT_RESET, yet the
    # journey must see the power loss, not an agent restart (power losses that use up the
    # attempts roll back as power-loss, which a fleet does not halt on; unexplained resets
    # halt it).
    journey = _installed_after_a_reset(tmp_path, monkeypatch, lc.TIME_REACHED)
    os.remove(tmp_path / "heap-reset.json")
    _a_vm_without_room(tmp_path, monkeypatch, PoweredOn())
    assert _record(tmp_path)["boot"] == "power-on"
    _a_vm_without_room(tmp_path, monkeypatch, SoftBoard())  # passed on by a VM failing too
    assert _record(tmp_path)["boot"] == "power-on" and _record(tmp_path)["count"] == 2
    agent = _on_the_new_slot(tmp_path, SoftBoard(), OnTheNewSlot())
    agent.journey = journey
    assert agent.boot_facts()["reset"] == "power-on"
    agent = _on_the_new_slot(tmp_path, SoftBoard(), OnTheNewSlot())  # a soft reset after
    agent.journey = journey  # that one (the OEM's own): an agent restart, the cause taken once
    assert agent.boot_facts()["reset"] == "agent-restart"
    # A VM whose journey took its boot's facts keeps none: the VM after is an agent restart.
    agent = _on_the_new_slot(tmp_path, PoweredOn(), OnTheNewSlot())
    agent.journey = journey
    with pytest.raises(SystemExit):
        agent.heap_reset(lc.INSTALLED, journey.job.id, None, ())
    assert "boot" not in _record(tmp_path)
    agent = _on_the_new_slot(tmp_path, SoftBoard(), OnTheNewSlot())
    agent.journey = journey
    assert agent.boot_facts()["reset"] == "agent-restart"


def test_a_soft_reset_in_the_trial_reruns_its_checks_in_the_same_window(tmp_path, monkeypatch):
    # A soft reset with no results kept (or one the OEM's code made) is an agent restart:
    # the chip did not reset, so no trial boot was spent and the window goes on.
    _installed_after_a_reset(tmp_path, monkeypatch, lc.TIME_REACHED)
    board = SoftBoard()
    agent = _on_the_new_slot(tmp_path, board, OnTheNewSlot())
    agent.start()  # the trial held: the VM restarts before it runs
    os.remove(tmp_path / "heap-reset.json")
    ran = []
    _checks(monkeypatch, ran)
    agent = _on_the_new_slot(tmp_path, SoftBoard(), OnTheNewSlot())
    agent.start()
    assert ran == [[]] and agent.journey.data["agent_restarts"] == 1
    assert "trial_resets" not in agent.journey.data  # no reset of the board counted


def _no_room_to_save(agent, monkeypatch):
    def save(journey):
        raise MemoryError("memory allocation failed, allocating 592 bytes")

    monkeypatch.setattr(agent.journal, "save", save)


def test_a_verdict_with_no_room_for_its_actions_resets_again_with_the_results(
    tmp_path, monkeypatch
):
    _trial_split_by_its_checks(tmp_path, monkeypatch, SoftBoard())
    monkeypatch.undo()
    board, boot = SoftBoard(), OnTheNewSlot()
    agent = _on_the_new_slot(tmp_path, board, boot)
    _no_room_to_save(agent, monkeypatch)  # the commit's save: 592 bytes, none in one piece
    with pytest.raises(SystemExit):
        agent.start()
    assert board.soft_resets == 1
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["state"] == lc.TRIAL  # confirmed (idempotent), not saved
    record = _record(tmp_path)
    assert record["count"] == 2 and record["outcome"][0] == "check-results"  # kept again
    monkeypatch.undo()
    board, boot = SoftBoard(), OnTheNewSlot()
    agent = _on_the_new_slot(tmp_path, board, boot)
    agent.start()
    assert boot.good == "ota_1" and "Committed" in [m["status"] for m in board.sent]


class BackOnTheOldSlot(Boot):
    def __init__(self):
        self.armed = []

    def try_slot(self, slot):
        self.armed.append(slot)

    def mark_bad(self, slot, confirmed=False):
        self.bad = slot, confirmed


class ResettingBoard(SoftBoard):
    def reboot(self):
        self.resets += 1
        raise SystemExit  # as machine.reset() does: nothing runs after it


def test_a_verdict_that_failed_is_not_finished_before_the_journal_has_it(tmp_path, monkeypatch):
    # No reset left (heap_resets 1 here): the commit's save failed, so the journey in RAM
    # (COMMITTED) is ahead of the journal (TRIAL): it must not be finished to IDLE with the
    # slot unconfirmed and nothing reported; recover() resumes from the journal instead. The
    # slot was confirmed before the save (mark_good), so its trial boot is not ended either:
    # the bootloader would boot it again (end_trial_boot).
    _trial_split_by_its_checks(tmp_path, monkeypatch, SoftBoard())
    monkeypatch.undo()
    board, boot = ResettingBoard(), OnTheNewSlot()
    cfg = {"device": DEVICE, "state_dir": str(tmp_path), "install": {"heap_resets": 1}}
    agent = Agent(cfg, boot, board, Idle(), None, board)
    _no_room_to_save(agent, monkeypatch)
    agent.start()
    assert board.soft_resets == 0 and board.resets == 0 and agent.resume_at is not None
    assert boot.good == "ota_1"
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["state"] == lc.TRIAL
    assert "Committed" not in [m["status"] for m in board.sent]


def test_a_trial_no_vm_can_read_back_ends_in_the_bootloaders_rollback(tmp_path, monkeypatch):
    # At 96K (3 runs of 5 on an earlier state) no VM after the checks read the journey
    # back: after heap_resets soft resets in a row the board resets, so the bootloader rolls
    # the unconfirmed slot back, and the old slot's boot reports RolledBack, its results not
    # taken for its own.
    _trial_split_by_its_checks(tmp_path, monkeypatch, SoftBoard())  # soft reset 1
    monkeypatch.undo()
    counts = []
    for _ in range(HEAP_RESETS):
        board = _a_vm_without_room(tmp_path, monkeypatch, ResettingBoard())
        counts.append((board.soft_resets, board.resets))
    assert counts == [(1, 0)] * (HEAP_RESETS - 1) + [(0, 1)]
    assert not os.path.exists(tmp_path / "heap-reset.json")  # the results went with it
    assert (
        board.sent[-1]["reason"] == "no-memory" and "rolls ota_1 back" in board.sent[-1]["detail"]
    )
    board, boot = Board(), BackOnTheOldSlot()  # the bootloader's pick after the reset
    agent = _on_the_new_slot(tmp_path, board, boot)
    ran = []
    _checks(monkeypatch, ran)
    agent.start()
    assert ran == [] and boot.armed == []  # no trial here, and the new slot is not armed again
    statuses = [m["status"] for m in board.sent]
    assert "RolledBack" in statuses and "Committed" not in statuses, statuses
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["state"] == lc.ROLLED_BACK


def test_a_trial_boot_is_not_ended_before_its_soft_resets_are_spent(tmp_path, monkeypatch):
    # Nor on the old slot, nor without a soft reset: recover() as before there.
    _trial_split_by_its_checks(tmp_path, monkeypatch, SoftBoard())
    monkeypatch.undo()
    for board, boot in ((Board(), OnTheNewSlot()), (ResettingBoard(), Boot())):
        agent = _on_the_new_slot(tmp_path, board, boot)
        assert not heapreset.end_trial_boot(agent, lc.TRIAL, "job-1", "ota_1")
        assert board.resets == 0
    board = ResettingBoard()
    agent = _on_the_new_slot(tmp_path, board, OnTheNewSlot())
    assert not heapreset.end_trial_boot(agent, lc.TRIAL, "job-1", "ota_1")  # 1 of HEAP_RESETS spent
    assert board.resets == 0 and os.path.exists(tmp_path / "heap-reset.json")
    # It runs inside recover(), with the heap exhausted: a MemoryError there is no reset,
    # and never escapes (at 96K an import in it once ended the app).
    spent = dict(_record(tmp_path), count=HEAP_RESETS)
    with open(tmp_path / "heap-reset.json", "w") as f:
        json.dump(spent, f)
    real_import = builtins.__import__

    def no_room(name, *args, **kwargs):
        if name.startswith("agent."):  # what a module's import meets in a full heap
            raise MemoryError("memory allocation failed, allocating 944 bytes")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_room)
    try:
        ended = [heapreset.end_trial_boot(agent, state, "job-1", "ota_1")
                 for state in (lc.DOWNLOADED, lc.TRIAL)]  # fmt: skip
    finally:
        monkeypatch.undo()
    assert ended == [False, False] and board.resets == 0


def test_a_trial_boot_is_ended_once_per_install(tmp_path, monkeypatch):
    # Were the new slot booted again after the reset (the bootloader's own business), its
    # VMs would reach the same end: no second reset, so never a reset loop.
    _trial_split_by_its_checks(tmp_path, monkeypatch, SoftBoard())
    monkeypatch.undo()
    with open(tmp_path / "heap-reset.json") as f:
        record = json.load(f)
    ended = []
    for _ in range(2):
        with open(tmp_path / "heap-reset.json", "w") as f:
            json.dump(dict(record, count=HEAP_RESETS), f)
        board = ResettingBoard()
        agent = _on_the_new_slot(tmp_path, board, OnTheNewSlot())
        try:
            ended.append(heapreset.end_trial_boot(agent, lc.TRIAL, "job-1", "ota_1"))
        except SystemExit:
            ended.append("reset")
    assert ended == ["reset", False]


class NoRoomToArmTwice(Boot):
    """set_boot()'s image check found no 1280 bytes in one piece, even after a collection
    (120K with TLS, at every resume from the journal)."""

    def __init__(self):
        self.tries = 0

    def try_slot(self, slot):
        self.tries += 1
        raise MemoryError("memory allocation failed, allocating 1280 bytes")


def test_an_action_the_heap_cannot_do_restarts_the_vm(tmp_path, monkeypatch):
    _installed_after_a_reset(tmp_path, monkeypatch)
    os.remove(tmp_path / "heap-reset.json")  # a board that needed no reset before
    board, boot = SoftBoard(), NoRoomToArmTwice()
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, boot, board, Idle(), None,
                  board)  # fmt: skip
    agent.start()  # connected, resumed: the install's schedule arms the slot now
    with pytest.raises(SystemExit):
        try:
            agent.turn()  # done twice (a collection between): then run() recovers, and
        except MemoryError as e:  # the VM restarts
            agent.recover(e)
    assert boot.tries == 2 and board.soft_resets == 1
    assert _record(tmp_path) == {"state": lc.INSTALLED, "job_id": "job-1", "count": 1,
                                 "outcome": None}  # fmt: skip
    assert agent.board.slots()["slots"]["ota_1"]["armed"] == 0  # no boot attempt used
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, Boot(), SoftBoard(), Idle(),
                  None, SoftBoard())  # fmt: skip
    agent.start()  # the next VM: the journey first, arming the slot held for the connection
    assert [a[0] for a in agent.held] == ["try_slot", "save_record", "report", "reboot"]


def test_without_a_soft_reset_a_failed_action_after_the_install_recovers(tmp_path, monkeypatch):
    _installed_after_a_reset(tmp_path, monkeypatch)
    os.remove(tmp_path / "heap-reset.json")
    board = Board()  # a reset could come after set_boot: none in INSTALLED
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, NoRoomToArmTwice(), board,
                  Idle(), None, board)  # fmt: skip
    agent.start()
    try:
        agent.turn()
    except MemoryError as e:
        agent.recover(e)  # as run() does
    assert board.resets == 0 and agent.resume_at is not None
    assert board.sent[-1]["reason"] == "no-memory"


def test_an_unparked_journey_never_resets(tmp_path, monkeypatch):
    board = SoftBoard()
    cfg = {"device": DEVICE, "state_dir": str(tmp_path), "install": {"park_journey": False}}
    agent = Agent(cfg, Boot(), board, None, None, board)
    _downloading(agent)
    assert not agent.heap_reset(lc.DOWNLOADING, "job-1", None, ())
    assert board.soft_resets == 0 and not os.path.exists(tmp_path / "heap-reset.json")
