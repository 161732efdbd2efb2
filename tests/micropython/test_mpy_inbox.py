"""Jobs and cancels that arrive while the MicroPython agent idles parked (agent/mpy/agent.py
defer/take_deferred), on CPython with stand-ins for the board: the MQTT callback only writes
the message to the inbox file on flash (the client acknowledges it when the callback
returns), and the next turn reads the journey back from the journal before it parses the
message (at 96K-98K the journey read back inside the callback, next to the MQTT receive and
the parsed message, found no room; docs/micropython.md). A power cut before the journal took
the job leaves it to the next boot; one after it is a replayed id, ignored."""

import json
import os

from agent.core import lifecycle as lc
from agent.mpy import phase
from agent.mpy.agent import Agent
from tests.micropython.test_mpy_recover import DEVICE, Boot, Channel, System


class Idle(Channel):
    def poll(self):
        pass


def _agent(tmp_path):
    agent = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, Boot(), Idle(), None, None,
                  System())  # fmt: skip
    agent.tick = lambda: None  # no step runs here: only the inbox
    agent.resume(first=False)
    agent.park_idle()
    assert agent.journey.idle
    return agent


def _loads(agent, monkeypatch):
    held = []  # what the agent held as its journey at each load of the journal
    load = agent.journal.load
    monkeypatch.setattr(agent.journal, "load", lambda policy: held.append(agent.journey)
                        or load(policy))  # fmt: skip
    return held


def test_a_job_arriving_idle_is_taken_on_the_next_turn(tmp_path, monkeypatch):
    monkeypatch.setattr(phase, "drop", lambda names: None)  # this process keeps its modules
    agent = _agent(tmp_path)
    held = _loads(agent, monkeypatch)
    job = {"id": "job-1", "url": "http://fw/x", "version": "2.0"}
    agent.on_job(job)
    agent.on_cancel({"job_id": "job-0"})
    assert held == [] and agent.journey.idle  # nothing loaded inside the callback
    with open(tmp_path / "inbox.txt") as f:
        assert [line.split(" ", 1)[0] for line in f.read().splitlines()] == ["job", "cancel"]
    agent.turn()
    assert len(held) == 1 and held[0].idle
    assert agent.journey.job.id == "job-1" and agent.journey.state != lc.IDLE
    assert not os.path.exists(tmp_path / "inbox.txt")
    assert not os.path.exists(tmp_path / "inbox.txt.taken")
    assert not agent.deferred
    with open(tmp_path / "journal.json") as f:
        assert json.load(f)["job"]["id"] == "job-1"


def test_a_power_cut_replays_the_inbox_and_the_journal_knows_the_job(tmp_path, monkeypatch):
    monkeypatch.setattr(phase, "drop", lambda names: None)
    agent = _agent(tmp_path)
    job = {"id": "job-1", "url": "http://fw/x", "version": "2.0"}
    agent.on_job(job)
    # Cut before the next turn: the next boot takes the job from the inbox (no park first).
    again = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, Boot(), Idle(), None, None,
                  System())  # fmt: skip
    assert again.deferred
    again.tick = lambda: None
    again.resume(first=False)
    again.park_idle()
    assert not getattr(again.journey, "idle", False)  # the inbox waits: no park
    again.turn()
    assert again.journey.job.id == "job-1"
    # Cut after the journal took it, before the taken inbox went: the id is a replay.
    with open(tmp_path / "inbox.txt.taken", "w") as f:
        f.write("job " + json.dumps(job) + "\n" + 'job {"id": "jo')  # the torn last line
    third = Agent({"device": DEVICE, "state_dir": str(tmp_path)}, Boot(), Idle(), None, None,
                  System())  # fmt: skip
    third.tick = lambda: None
    third.resume(first=False)
    ignored = []
    monkeypatch.setattr(third, "do_ignore", lambda job_id, reason: ignored.append(reason))
    third.turn()
    assert ignored == ["duplicate or replayed job id"]
    assert third.journey.job.id == "job-1" and not third.deferred
    assert not os.path.exists(tmp_path / "inbox.txt.taken")
