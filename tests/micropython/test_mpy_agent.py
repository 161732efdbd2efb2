"""The agent's MicroPython runtime end to end, under the real unix port, on the virtual
MicroPython board (hil/mpyboard): a live mosquitto, the project's HTTP server, ESP-IDF's OTA
rules on flash files, a reset that ends the process and boots what the bootloader picks.

The heap is bounded with -X heapsize=HEAP (docs/micropython.md: the smallest heap that
completes an update when the code is compiled at boot; most of it holds code objects).
"""

import os
import re

import pytest

from agent.core.lifecycle import FINAL_STATUSES
from hil.mpyboard import flash
from hil.mpyboard.rig import MpyRig
from hil.scenarios import test_catalogue as catalogue

HEAP = "512K"  # 320K completed an update once here, 288K never; 384K failed now and then
T = 60


@pytest.fixture
def rig(tmp_path, micropython):
    r = MpyRig(str(tmp_path / "rig"), heap=HEAP, trial_window_s=30)
    r.start()
    try:
        r.power_on()
        r.start_row = r.wait_online(30)
        yield r
    finally:
        r.close()


def run_job(rig, version, **release):
    job = rig.push_job(version, rig.release(version, **release))
    return job, rig.wait_status(job["id"], FINAL_STATUSES, T)


def otadata(rig):
    esp32 = flash.modules(rig.board.flash_dir)[0]
    return [(e.seq, e.state) for e in esp32.read_otadata()]


def test_good_job_ends_committed_on_the_new_slot(rig):
    job, final = run_job(rig, "1.1.0")
    assert final["status"] == "Committed", final
    row = catalogue.settled_row(rig, job["id"])
    assert row["booted"] == row["primary"] == "ota_1"
    assert row["slots"]["ota_1"]["version"] == "1.1.0"
    assert otadata(rig)[1] == (2, 2)  # seq 2, VALID: mark_app_valid_cancel_rollback ran
    names = [s["status"] for s in rig.statuses(job["id"])]
    for expected in ("Downloading", "SignatureVerified", "Installing", "InstallRebooting",
                     "TrialRunning", "Committed"):  # fmt: skip
        assert expected in names
    seqs = [s["seq"] for s in rig.statuses()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_failed_trial_rolls_back_after_the_reset(rig):
    job, final = run_job(rig, "1.1.0", defects=("refuse-session",))
    assert final["status"] == "RolledBack" and final["check"] == "charging-session", final
    row = catalogue.settled_row(rig, job["id"])
    assert row["booted"] == row["primary"] == "ota_0"
    # The bootloader aborted the unconfirmed image; the old one never left VALID.
    assert sorted(otadata(rig)) == [(1, 2), (2, 4)]


def test_tampered_payload_is_refused_before_set_boot(rig):
    url = rig.release("1.1.0")
    path = rig.images.files[url.rsplit("/", 1)[1]]
    with open(path, "r+b") as f:
        f.seek(-40, os.SEEK_END)  # inside the gzip payload, after the signed header
        byte = f.read(1)
        f.seek(-40, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x55]))
    job = rig.push_job("1.1.0", url)
    final = rig.wait_status(job["id"], FINAL_STATUSES, T)
    assert final["status"] == "InstallationFailed" and final["reason"] == "payload-mismatch"
    assert otadata(rig)[1][0] == 0xFFFFFFFF  # set_boot never ran: otadata untouched
    assert len(re.findall(rig.boot_banner, rig.console_text())) == 1  # never rebooted
    row = catalogue.settled_row(rig, job["id"])
    assert row["slots"]["ota_1"]["attempts_left"] == 0


# Journal saves of a good update, in order: accepted (DownloadScheduled), Downloading,
# Downloaded, InstallScheduled, Installing, Installed, Rebooting | new slot: Trial, Committed,
# Idle. A cut at the Trial save lands before mark_app_valid_cancel_rollback: ESP-IDF's
# bootloader aborts the unconfirmed image at the next boot, so that journey rolls back, with
# the power loss as its cause (the board's reset reason), which a fleet does not halt on.
CUTS = [(n, "RolledBack" if n == 8 else "Committed") for n in range(1, 11)]


@pytest.mark.parametrize("cut, expected", CUTS, ids=["save-%d" % n for n, _ in CUTS])
def test_power_cut_at_every_journal_step_resumes(rig, cut, expected):
    with open(os.path.join(rig.board.dir, "cut_at"), "w") as f:
        f.write(str(cut))
    job = rig.push_job("1.1.0", rig.release("1.1.0"))
    rig.board.wait_line("POWER CUT at save %d" % cut, T)
    final = rig.wait_status(job["id"], FINAL_STATUSES, T)
    assert final["status"] == expected, final
    if expected == "RolledBack":
        assert (final["cause"], final["evidence"]) == ("power-loss", {"resets": ["power-on"]})
    booted = catalogue.settled_row(rig, job["id"])["booted"]
    assert booted == ("ota_1" if expected == "Committed" else "ota_0")
    # The cut after the last save comes after the final status: wait for it, do not race it.
    rig.board.wait_line("[rom] power off", T, anywhere=True)


# The scenario catalogue (hil/scenarios) against the MicroPython board.


def test_catalogue_good_update(rig):
    catalogue.test_good_update_commits(rig)


def test_catalogue_bad_signature(rig):
    catalogue.test_bad_signature_refused_with_board_untouched(rig)


def test_catalogue_crash_on_boot(rig):
    catalogue.test_crash_looping_firmware_falls_back_by_boot_counting(rig)


@pytest.mark.parametrize("defect, check", [("no-backend", "communication"),
                                           ("alarm-storm", "alarms")])  # fmt: skip
def test_catalogue_failed_trial(rig, defect, check):
    catalogue.test_broken_path_rolls_back(rig, defect, check)


def test_job_version_not_in_the_signed_manifest_is_refused(rig):
    """The MicroPython agent too: a job saying 9.9.9 for a 1.1.0 bundle is refused before
    anything is written (issue 11, adversarial review #16)."""
    job = rig.push_job("9.9.9", rig.release("1.1.0"))
    final = rig.wait_status(job["id"], FINAL_STATUSES, T)
    assert (final["status"], final["reason"]) == ("InvalidSignature", "version-mismatch")
    assert otadata(rig)[1][0] == 0xFFFFFFFF  # set_boot never ran: otadata untouched


def test_esp32_reset_reasons_become_boot_facts():
    """The constants of MicroPython's esp32 `machine` (from its stubs); only power-on and the
    watchdog name a cause, the rest stays unknown (never guessed to be a power loss)."""
    import sysconfig

    from agent.mpy.agent import esp32_boot_facts

    constants = {}
    with open(os.path.join(sysconfig.get_paths()["purelib"], "machine.pyi")) as f:
        for name, value in re.findall(r"^(\w+_RESET): Final\[int\] = (\d+)", f.read(), re.M):
            constants[name] = int(value)

    class Machine:
        pass

    machine = Machine()
    machine.__dict__.update(constants)
    seen = {}
    for name, code in constants.items():
        machine.reset_cause = lambda code=code: code
        seen[name] = esp32_boot_facts(machine)["reset"]
    assert seen == {"PWRON_RESET": "power-on", "WDT_RESET": "watchdog", "HARD_RESET": "unknown",
                    "SOFT_RESET": "unknown", "DEEPSLEEP_RESET": "unknown"}  # fmt: skip
