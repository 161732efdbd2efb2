"""A reset for a split heap on the MicroPython agent (agent/mpy/agent.py heap_reset), on
CPython with stand-ins for the board: when the journey cannot be read back after a parked
step (at 96K-100K the download leaves 30-35 KiB free with no 600 bytes in one piece), the
step's outcome, its state and job and what arrived meanwhile go to flash and the board
resets; the next boot hands the outcome to the journey read back from the journal, once.
At most HEAP_RESETS in a row at one state of one job, then recover() as before."""

import json
import os

import pytest

from agent.core import lifecycle as lc
from agent.core.jobs import JobMemory, parse_job
from agent.core.journey import Journey
from agent.mpy import phase, steps
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
    assert agent.heap_reset(lc.INSTALLING, journey.job, None, ())
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
    assert agent.journey.trace[-3:] == [lc.DOWNLOADED, lc.SIGNATURE_VERIFIED,
                                        lc.INSTALL_SCHEDULED]  # fmt: skip
    assert [m["status"] for m in board.sent] == ["Downloaded", "SignatureVerified",
                                                 "InstallScheduled"]  # fmt: skip
    assert not agent.deferred  # the cancel of another job was taken (and ignored)

    again, _ = _boot(tmp_path)  # a power cut after the outcome was taken: as any other cut
    again.start()
    assert again.held is None and again.journey.state == lc.INSTALL_SCHEDULED


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
    assert not agent.heap_reset(lc.TRIAL, agent.journey.job, (lc.CHECKS_PASSED, {}), ())
    assert board.resets == 0 and not os.path.exists(tmp_path / "heap-reset.json")


def test_resets_in_a_row_at_one_state_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "download", lambda agent: (lc.DOWNLOAD_OK, {}))
    for n in range(1, HEAP_RESETS + 2):
        agent, board = _boot(tmp_path)
        _downloading(agent)
        _split_heap(agent, monkeypatch)
        agent.do_download()
        if n <= HEAP_RESETS:
            assert board.resets == 1 and _record(tmp_path)["count"] == n
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
    agent.turn()
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


def test_the_trial_after_heap_resets_boots_as_any_other(tmp_path, monkeypatch):
    # Resumed before the connection, the journey's read-back after the checks failed at
    # 98K-100K in 14 runs of 15, and no reset may follow it (the new slot is unconfirmed).
    journey = _installed_after_a_reset(tmp_path, monkeypatch, lc.TIME_REACHED)
    assert journey.state == lc.REBOOTING  # armed, saved after set_boot
    board, boot = Board(), OnTheNewSlot()
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, boot, board, Idle(), None,
                  board)  # fmt: skip
    parked = []

    def checks(agent, step):
        parked.append(agent.journey.inbox)
        return {name: (True, {}) for name in agent.journey.required_checks}

    monkeypatch.setattr(steps, "run_checks", checks)
    agent.start()  # connected first, then resumed: the trial runs in start(), parked
    assert agent.held is None and parked == [[]] and boot.good == "ota_1"
    assert "Committed" in [m["status"] for m in board.sent]
