"""Attacks through the job a backend (or whoever can publish on its topic) sends: code named
as a trial check, checks dropped, a version the bundle does not carry, a trickling server
holding the worker, a cancel that leaves the worker running (issue 11; adversarial review
#1, #2, #11, #16, #17). The daemon runs in-process on a file board (tests/daemon/inproc.py)."""

import time

import pytest

from agent.core import lifecycle as lc
from hil.services.httpserver import FileServer
from tests.bundle.factory import make_bundle
from tests.daemon import plugins
from tests.daemon.inproc import Board

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def release(tmp_path):
    """A signed 1.1.0 bundle (security version 2) and its root, served over HTTP."""
    bundle, root = make_bundle(tmp_path, version="1.1.0", security_version=2)
    server = FileServer({"b.cub": bundle}).start()
    server.bundle, server.root = bundle, root
    yield server
    server.stop()


@pytest.fixture
def boards(tmp_path, release):
    made = []

    def make(**config):
        board = Board(tmp_path / ("board%d" % len(made)), release.root, config)
        made.append(board)
        return board

    yield make
    for board in made:
        board.stop()


def job(release, **fields):
    doc = {"job_id": "j1", "url": release.url("b.cub"), "version": "1.1.0"}
    doc.update(fields)
    return doc


def test_job_checks_cannot_import_os_abort(boards, release):
    """`"checks": ["os:abort"]` used to be imported and called at trial time: SIGABRT, and a
    crash loop, since the journal restarts the trial. Now it is refused before anything."""
    board = boards().start()
    board.channel.inject("update/job", job(release, checks=["os:abort"]))
    status = board.channel.wait_status(lambda m: m.get("reason") or m["status"] != "Idle")
    assert (status["status"], status["reason"], status["job_id"]) == ("Idle", "malformed-job", "j1")
    assert "'os:abort'" in status["detail"]
    assert board.daemon.journey.state == lc.IDLE


def test_job_check_naming_an_importable_plugin_is_never_loaded(boards, release):
    plugins.LOADED.clear()
    board = boards().start()
    board.channel.inject("update/job", job(release, checks=["tests.daemon.plugins:Recorder"]))
    status = board.channel.wait_status(lambda m: m.get("reason") or m["status"] != "Idle")
    assert status["reason"] == "malformed-job" and "Recorder" in status["detail"]
    assert plugins.LOADED == []


def test_journal_naming_an_unconfigured_plugin_never_loads_it(tmp_path):
    """A job in the journal (written before this agent, or by someone with the data
    partition) still cannot name code: the trial fails that check without importing it."""
    from agent.control import steps

    plugins.LOADED.clear()
    results = steps.run_checks(None, ["tests.daemon.plugins:Recorder"], lambda *a: None,
                               configured=["communication"])  # fmt: skip
    passed, evidence = results["tests.daemon.plugins:Recorder"]
    assert not passed and "neither configured nor registered" in evidence["problem"]
    assert plugins.LOADED == []


def test_job_checks_cannot_replace_configured_checks(boards, release):
    """The OEM's check fails on this board; a job adding "alarms" used to replace it and
    turn the failing trial into a commit (review #2). It must roll back."""
    board = boards(trial={"checks": ["tests.daemon.plugins:ContactorSelfTest"]}).start()
    board.channel.inject("update/job", job(release, checks=["alarms"]))
    board.reboot()  # into B, for the trial
    board.channel.wait_status(lambda m: m["status"] in ("Committed", "RolledBack") or
                              m.get("passed") is False)  # fmt: skip
    ran = [m["check"] for m in board.channel.statuses() if m["status"] == "TrialRunning"
           and "check" in m]  # fmt: skip
    assert sorted(ran) == ["alarms", "tests.daemon.plugins:ContactorSelfTest"]
    board.reboot()  # the trial failed: back to A, which reports the rollback
    final = board.channel.wait_status(lambda m: m["status"] in lc.FINAL_STATUSES)
    assert final["status"] == "RolledBack"
    assert final["check"] == "tests.daemon.plugins:ContactorSelfTest"
    assert board.boot.booted_slot() == "A"


def test_job_version_not_in_the_signed_manifest_is_refused(boards, release):
    """A job saying 9.9.9 for a 1.1.0 bundle used to end as `Committed 9.9.9` (review #16)."""
    board = boards().start()
    board.channel.inject("update/job", job(release, version="9.9.9"))
    status = board.channel.wait_status(
        lambda m: m["status"] in lc.FINAL_STATUSES + ("Installing", "InstallRebooting")
    )
    assert (status["status"], status["reason"]) == ("InvalidSignature", "version-mismatch")
    assert "9.9.9" in status["detail"] and "1.1.0" in status["detail"]
    with open(board.dir + "/b.img", "rb") as f:
        assert f.read() == b"firmware of slot b"  # nothing was written


@pytest.mark.parametrize("key", ["job_id", "id", "requestId"])
def test_malformed_job_status_keeps_the_job_id(boards, release, key):
    board = boards().start()
    board.channel.inject("update/job", {key: "J-ftp", "url": "ftp://x/b", "version": "1"})
    status = board.channel.wait_status(lambda m: m.get("reason") == "malformed-job")
    assert status["job_id"] == "J-ftp"


def test_trickling_server_cannot_outlive_the_job_deadline(boards, release):
    """One byte every 0.2 s never trips the per-read timeout; the job's deadline used to be
    ignored while the download ran (review #11): DownloadFailed at the deadline now."""
    release.faults.trickle_s = 0.2
    board = boards().start()
    board.channel.inject("update/job", job(release, deadline=int(time.time()) + 2))
    assert release.faults.trickling.wait(10), "the download never started"
    final = board.channel.wait_status(lambda m: m["status"] in lc.FINAL_STATUSES, timeout=20)
    assert (final["status"], final["reason"]) == ("DownloadFailed", "deadline")
    _assert_worker_gone(board, release)


def test_cancel_stops_the_download_worker_and_its_socket(boards, release):
    """Cancel used to report `Idle cancelled` while the worker and its socket lived on."""
    release.faults.trickle_s = 0.2
    board = boards().start()
    board.channel.inject("update/job", job(release))
    assert release.faults.trickling.wait(10), "the download never started"
    board.channel.inject("update/cancel", {"job_id": "j1"})
    board.channel.wait_status(lambda m: m.get("reason") == "cancelled")
    _assert_worker_gone(board, release)


def _assert_worker_gone(board, release):
    worker = board.daemon.worker
    worker.join(10)
    assert not worker.is_alive(), "the download worker lived on"
    assert release.faults.hung_up.wait(10), "the download's socket stayed open"


def test_file_job_under_file_dir_installs_and_a_missing_one_is_not_retried(boards, release):
    """file: job URLs work for bundles dropped into [download] file_dir; one that is not
    there fails at once as bad-source (review #24: it used to be retried as transient)."""
    import os
    import shutil

    board = boards(download={"file_dir": "drop", "retries": 0})
    os.makedirs(os.path.join(board.dir, "drop"))
    shutil.copy(release.bundle, os.path.join(board.dir, "drop", "b.cub"))
    board.start()
    url = "file://%s/drop/b.cub" % board.dir
    board.channel.inject("update/job", {"job_id": "f1", "url": url, "version": "1.1.0"})
    assert board.system.rebooted.wait(30), "the file: job never got to the reboot"
    board.reboot()
    board.channel.wait_status(lambda m: m["status"] == "Committed")
    board.channel.inject("update/job", {"job_id": "f2", "url": url + ".gone", "version": "1.2.0"})
    final = board.channel.wait_status(lambda m: m["job_id"] == "f2" and m["status"] in
                                      lc.FINAL_STATUSES + ("DownloadPaused",))  # fmt: skip
    assert (final["status"], final["reason"]) == ("DownloadFailed", "bad-source")


def test_file_job_outside_file_dir_is_refused_the_same_whether_it_exists(boards, release):
    board = boards(download={"file_dir": "drop"}).start()
    details = []
    for i, path in enumerate(("/etc/passwd", "/etc/no-such-file-here")):
        job_id = "x%d" % i
        board.channel.inject("update/job", {"job_id": job_id, "url": "file://" + path,
                                            "version": "1.1.0"})  # fmt: skip
        final = board.channel.wait_status(lambda m, j=job_id: m["job_id"] == j and
                                          m["status"] in lc.FINAL_STATUSES)  # fmt: skip
        assert (final["status"], final["reason"]) == ("DownloadFailed", "bad-source")
        details.append(final["detail"].replace(path, "PATH"))
    assert details[0] == details[1]


def test_a_bundle_gone_after_a_restart_at_downloaded_fails_the_download(boards, release):
    """After a restart at Downloaded the daemon fetches the header again to verify it. A
    server that lost the bundle had no edge out of Downloaded (IllegalTransition): the daemon
    recovered and tried again every recover_s, for ever. Now: DownloadFailed."""
    import json
    import os

    from agent.core.jobs import JobMemory, parse_job
    from agent.core.journey import Journey
    from agent.state.journal import Journal

    board = boards()
    cfg = board.cfg()
    os.makedirs(cfg.state_dir, exist_ok=True)
    doc = json.dumps({"id": "j1", "url": release.url("gone.cub"), "version": "1.1.0",
                      "retries": 0})  # fmt: skip
    journey = Journey(JobMemory())
    journey.offer(parse_job(doc.encode(), {"model": "m"}), time.time(), "A", "B", 0.5)
    journey.handle(lc.TIME_REACHED, time.time())
    journey.handle(lc.DOWNLOAD_OK, time.time())
    assert journey.state == lc.DOWNLOADED
    Journal(os.path.join(cfg.state_dir, "journal.json")).save(journey)
    board.start()
    final = board.channel.wait_status(lambda m: m["status"] in lc.FINAL_STATUSES, timeout=30)
    assert final["status"] == "DownloadFailed", final
    assert "404" in final["detail"], final
