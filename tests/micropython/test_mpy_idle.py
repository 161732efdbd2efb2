"""The journey parked while the board idles and during the trial (agent/mpy/park.py), under
the real unix port on the virtual MicroPython board: the board comes online parked, a cancel
that arrives idle is answered by the journey read back from the journal, a job is taken and
committed, and a replayed job id is still known afterwards (the job memory is the journal's)."""

import time

from agent.core.lifecycle import FINAL_STATUSES
from hil.mpyboard.rig import MpyRig
from tests.micropython.test_mpy_agent import ROOMY, T

# The unpark path itself: at the tests' HEAP (96K) the read-back next to the connection
# restarts the VM first, and the next VM's boot answers from the journal (test_mpy_agent).
HEAP = ROOMY


def _console_has(r, text, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in r.console_text():
            return True
        time.sleep(0.2)
    return False


def test_an_idle_board_parks_and_answers_from_the_journal(tmp_path, micropython):
    r = MpyRig(str(tmp_path / "rig"), heap=HEAP)
    r.start()
    try:
        r.power_on()
        r.wait_online(30)
        assert "parked: heap used" in r.console_text()
        r.backend.cancel_job(r.device_id, "no-such-job")
        assert _console_has(r, "ignoring job no-such-job: no such job in progress", T)
        assert "heap unparked" in r.console_text()
        job = r.push_job("1.1.0", r.release("1.1.0"))
        assert r.wait_status(job["id"], FINAL_STATUSES, T)["status"] == "Committed"
        assert r.console_text().count("phase trial: start") >= 1
        again = {"id": job["id"], "url": job["url"], "version": job["version"]}
        r.backend.publish_job(r.device_id, again)
        assert _console_has(r, "ignoring job %s: duplicate or replayed job id" % job["id"], T)
    finally:
        r.close()
