"""Time bounds of the board's transfers, under the real unix port on the virtual MicroPython
board: a server that trickles is cut at `download max_time_s`, and a job's deadline stops its
download while it runs (as the Linux agent's daemon does), both with a clear final status and
nothing written to the slot; a cancel and a job that arrive while the download runs with the
journey parked are answered by the journey read back after it. The link is slowed by the
rig's fault proxy (hil/services)."""

import time

from agent.core.lifecycle import FINAL_STATUSES
from hil.mpyboard.rig import MpyRig
from tests.micropython.test_mpy_agent import HEAP, T, otadata

ERASED = 0xFFFFFFFF  # otadata's second entry before any set_boot
SLOW = 100  # bytes/s: the signed header alone takes several seconds


def _slow_rig(tmp_path, download):
    r = MpyRig(str(tmp_path / "rig"), heap=HEAP, link_rate=SLOW)
    r.start()
    r.edit_config(lambda cfg, _dir: cfg["download"].update(download))
    r.power_on()
    r.wait_online(30)
    return r


def _next_job_commits(r):
    """The link fast again, the next job is taken and installed."""
    r.network.rate = 0
    job = r.push_job("1.1.0", r.release("1.1.0"))
    assert r.wait_status(job["id"], FINAL_STATUSES, T)["status"] == "Committed"


def test_a_trickling_server_is_cut_at_max_time(tmp_path, micropython):
    r = _slow_rig(tmp_path, {"max_time_s": 2})
    try:
        job = r.push_job("1.1.0", r.release("1.1.0"), retries=0)
        final = r.wait_status(job["id"], FINAL_STATUSES, T)
        assert final["status"] == "DownloadFailed" and final["reason"] == "network", final
        assert "was not done after download max_time_s = 2 s" in final["detail"], final
        assert otadata(r)[1][0] == ERASED
    finally:
        r.close()


def test_the_job_deadline_stops_a_running_download(tmp_path, micropython):
    r = _slow_rig(tmp_path, {})
    try:
        # Due in 5 s: the download starts at once and is still fetching the header then (at
        # 100 B/s it takes longer), with room for a loaded machine to deliver the job first.
        job = r.push_job("1.1.0", r.release("1.1.0"), deadline=int(time.time()) + 5)
        final = r.wait_status(job["id"], FINAL_STATUSES, T)
        assert final["status"] == "DownloadFailed" and final["reason"] == "deadline", final
        assert "its deadline passed while Downloading" in final["detail"], final
        assert otadata(r)[1][0] == ERASED
        _next_job_commits(r)  # the agent goes on
    finally:
        r.close()


def test_a_cancel_and_a_job_during_a_parked_download_are_answered(tmp_path, micropython):
    """The download runs with the journey parked (agent/mpy/park.py): a second job and a cancel
    that arrive meanwhile wait in its inbox; the cancel ends the step at its next poll, and the
    journey read back from the journal answers both, in their order."""
    r = _slow_rig(tmp_path, {})
    try:
        job = r.push_job("1.1.0", r.release("1.1.0"))
        r.wait_status(job["id"], "Downloading", T)
        other = r.push_job("1.2.0", r.release("1.2.0"))
        r.backend.cancel_job(r.device_id, job["id"])
        cancelled = {"job_id": job["id"], "reason": "cancelled"}
        r.backend.wait_status(r.device_id, lambda s: cancelled.items() <= s.items(), T)
        busy = r.wait_status(other["id"], "Idle", T)
        assert busy["reason"] == "rejected" and "busy with job %s" % job["id"] in busy["detail"]
        assert "parked: heap used" in r.console_text()
        assert otadata(r)[1][0] == ERASED
        _next_job_commits(r)  # the journey came back whole
    finally:
        r.close()
