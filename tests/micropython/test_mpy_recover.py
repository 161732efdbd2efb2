"""A failed action's recovery on the MicroPython agent (agent/mpy/agent.py), on CPython with
stand-ins for the board: the heap that failed an action seldom holds two journeys, so
recover() reports from the journal's record without loading a journey, and the resume that
follows parks the journey in RAM before it loads the journal's (at 98K-100K every resume
failed while the failed journey was still held, and the board stayed in recover() for good;
docs/micropython.md)."""

import json

from agent.core import lifecycle as lc
from agent.core.jobs import JobMemory, parse_job
from agent.core.journey import Journey
from agent.mpy import phase
from agent.mpy.agent import Agent

T0 = 1767225600
DEVICE = {"id": "mpy-1", "model": "m", "hardware_revision": "r1"}
# recover() as it goes once no reset for the heap may come (they are used up, or off):
# test_mpy_heap_reset.py tests those resets, which a MemoryError meets first.
NO_RESETS = {"device": DEVICE, "install": {"heap_resets": 0}}


class Boot:
    name = "esp32-ota"

    def booted_slot(self):
        return "ota_0"

    def other_slot(self, slot):
        return "ota_1"

    def mark_good(self, slot):
        pass


class Channel:
    def __init__(self):
        self.sent = []

    def publish(self, suffix, payload, retain=False, on_ack=None):
        self.sent.append(payload)


class System:
    def local_offset_s(self):
        return 0


def test_a_resume_after_a_failed_action_never_holds_two_journeys(tmp_path, monkeypatch):
    monkeypatch.setattr(phase, "drop", lambda names: None)  # this process keeps its modules
    agent = Agent(dict(NO_RESETS, state_dir=str(tmp_path)), Boot(), Channel(), None, None,
                  System())  # fmt: skip
    doc = {"id": "job-1", "url": "http://fw/x", "version": "2.0"}
    journey = Journey(JobMemory())
    journey.offer(parse_job(json.dumps(doc).encode(), DEVICE), T0, "ota_0", "ota_1", 0.5)
    journey.handle(lc.TIME_REACHED, T0)
    assert journey.state == lc.DOWNLOADING
    agent.journal.save(journey)
    agent.journey = journey
    held = []  # what the agent held as its journey at each load of the journal
    load = agent.journal.load
    monkeypatch.setattr(agent.journal, "load", lambda policy: held.append(agent.journey)
                        or load(policy))  # fmt: skip

    agent.recover(MemoryError("memory allocation failed"))
    assert held == []
    report = agent.channel.sent[-1]
    assert (report["status"], report["job_id"], report["reason"]) == ("Downloading", "job-1",
                                                                      "no-memory")  # fmt: skip

    agent.resume()
    assert len(held) == 1 and held[0] is not journey and held[0].job.id == "job-1"
    assert held[0].inbox == []  # parked: what arrives meanwhile would wait there
    assert agent.journey.state == lc.DOWNLOAD_SCHEDULED  # resumed from the journal


def test_a_boot_whose_journal_cannot_be_read_back_recovers(tmp_path, monkeypatch):
    # At 98K the boot's resume once met a MemoryError, and parking the idle board after it
    # read the journey it never got: an AttributeError out of start(), a reset loop.
    agent = Agent(dict(NO_RESETS, state_dir=str(tmp_path)), Boot(), Channel(), None, None,
                  System())  # fmt: skip

    def no_room(policy):
        raise MemoryError("memory allocation failed, allocating 368 bytes")

    monkeypatch.setattr(agent.journal, "load", no_room)
    agent.resume_safely()
    assert agent.journey is None and agent.resume_at is not None
    assert agent.channel.sent[-1]["reason"] == "no-memory"


def test_parking_the_idle_board_frees_its_journey_at_once(tmp_path, monkeypatch):
    # A name left holding the journey while park() collects keeps its modules' objects on
    # the heap (79.9 instead of 55.3 KiB on a 98K board, which then failed to take a job).
    import gc
    import weakref

    from agent.mpy import park

    monkeypatch.setattr(phase, "drop", lambda names: None)  # this process keeps its modules
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, Boot(), Channel(), None,
                  None, System())  # fmt: skip
    agent.resume(first=False)
    ref = weakref.ref(agent.journey)
    alive = []
    collect = gc.collect

    def collect_and_look():
        collect()
        alive.append(ref())

    monkeypatch.setattr(park.gc, "collect", collect_and_look)
    agent.park_idle()
    assert agent.journey.idle and alive == [None]


def test_an_inventory_the_heap_could_not_build_is_built_again(tmp_path, monkeypatch):
    # At 108K (the journey not parked) the row's JSON found no 592 bytes in one piece at
    # start: the board stayed offline to its backend, which waits for that row.
    from agent.mpy import agent as agent_module

    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, Boot(), Channel(), None,
                  None, System())  # fmt: skip
    rows = []

    def row():
        if not rows:
            rows.append(None)
            raise MemoryError("memory allocation failed, allocating 592 bytes")
        rows.append("row")
        return {"device_id": "mpy-1"}

    monkeypatch.setattr(agent, "inventory_row", row)
    agent.publish_inventory()
    assert agent.inventory_due is not None and agent.channel.sent == []
    agent.channel.poll = lambda: None
    agent.tick = lambda: None
    agent.journey = Journey(JobMemory())
    agent.turn()  # not yet
    assert rows == [None]
    clock = [agent.inventory_due]
    monkeypatch.setattr(agent_module.time, "time", lambda: clock[0])
    agent.turn()
    assert rows == [None, "row"] and agent.channel.sent == [{"device_id": "mpy-1"}]
    assert agent.inventory_due is None
