"""The journal on disk: round trips, and damaged files that must never be guessed at."""

import json
import os

from agent.core import lifecycle as lc
from agent.core.jobs import JobMemory, parse_job
from agent.core.journey import Journey
from agent.state.journal import Journal

DEVICE = {"model": "acme-ac22"}


def journey_in_trial():
    j = Journey(JobMemory())
    raw = json.dumps({"id": "job-1", "url": "https://fw/x", "version": "2.0"}).encode()
    j.offer(parse_job(raw, DEVICE), 1000, "A", "B", 0.25)
    for event in (lc.TIME_REACHED, lc.DOWNLOAD_OK, lc.SIGNATURE_OK, lc.TIME_REACHED,
                  lc.INSTALL_OK, lc.TIME_REACHED, lc.REBOOTED_INTO_NEW):  # fmt: skip
        j.handle(event, 1000)
    return j


def test_saved_journey_loads_back_identical(tmp_path):
    journal = Journal(str(tmp_path / "journal.json"))
    saved = journey_in_trial()
    journal.save(saved)
    loaded = journal.load()
    assert journal.problem is None
    assert loaded.to_record() == saved.to_record()
    assert loaded.state == lc.TRIAL
    assert loaded.job == saved.job


def test_no_journal_yet_means_idle_without_complaint(tmp_path):
    journal = Journal(str(tmp_path / "journal.json"))
    assert journal.load().state == lc.IDLE
    assert journal.problem is None


def test_truncated_journal_at_every_length_starts_idle_and_keeps_the_file(tmp_path):
    path = tmp_path / "journal.json"
    Journal(str(path)).save(journey_in_trial())
    whole = path.read_bytes()
    for n in range(len(whole) - 2):  # the last bytes are only closing whitespace
        path.write_bytes(whole[:n])
        journal = Journal(str(path))
        journey = journal.load()
        assert journey.state == lc.IDLE, n
        assert journal.problem is not None, n
        aside = journal.problem[1]
        assert open(aside, "rb").read() == whole[:n]
        assert not path.exists()
        os.unlink(aside)


def test_garbage_journal_is_moved_aside_not_overwritten(tmp_path):
    path = tmp_path / "journal.json"
    path.write_bytes(b"\xff\xfe not json at all")
    (tmp_path / "journal.json.corrupt-0").write_bytes(b"older evidence")
    journal = Journal(str(path))
    assert journal.load().state == lc.IDLE
    assert "not valid JSON" in journal.problem[0]
    assert journal.problem[1].endswith("journal.json.corrupt-1")
    assert (tmp_path / "journal.json.corrupt-0").read_bytes() == b"older evidence"


def test_record_with_unknown_state_is_refused(tmp_path):
    path = tmp_path / "journal.json"
    record = journey_in_trial().to_record()
    record["state"] = "half-installed"
    path.write_text(json.dumps(record))
    journal = Journal(str(path))
    assert journal.load().state == lc.IDLE
    assert "unknown state" in journal.problem[0]


def test_replayed_job_stays_ignored_after_the_journal_was_damaged(tmp_path):
    # The job is broken (no url) but the memory of seen ids survives the fallback.
    path = tmp_path / "journal.json"
    record = journey_in_trial().to_record()
    del record["job"]["url"]
    path.write_text(json.dumps(record))
    journey = Journal(str(path)).load()
    assert journey.state == lc.IDLE
    assert journey.memory.seen("job-1")


def test_journal_replaced_by_a_directory_is_moved_aside_and_the_agent_starts_idle(tmp_path):
    """Issue 11 #21: a directory where the journal should be (stands in for a damaged
    filesystem) is an unusable journal, not a crash."""
    path = tmp_path / "journal.json"
    path.mkdir()
    journal = Journal(str(path))
    assert journal.load().state == lc.IDLE
    assert "journal.json.corrupt-0" in journal.problem[0]
    assert (tmp_path / "journal.json.corrupt-0").is_dir()
    journal.save(journey_in_trial())  # and the agent can keep a journal again
    assert journal.load().state == lc.TRIAL


def test_journal_eio_is_reported_and_the_agent_starts_idle(tmp_path, monkeypatch):
    """Issue 11 #21: EIO from a failing medium. No medium here can fail on demand, so `open`
    is made to raise EIO for the journal path (and renaming it aside fails too)."""
    import builtins
    import errno

    path = str(tmp_path / "journal.json")
    Journal(path).save(journey_in_trial())
    real_open = builtins.open

    def failing_open(name, *args, **kwargs):
        if str(name) == path:
            raise OSError(errno.EIO, "Input/output error")
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)

    def failing_rename(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "rename", failing_rename)
    journal = Journal(path)
    assert journal.load().state == lc.IDLE
    assert "Input/output error" in journal.problem[0]
    assert "could not move it aside" in journal.problem[0]
