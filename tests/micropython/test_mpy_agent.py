"""The agent's MicroPython runtime end to end, under the real unix port, on the virtual
MicroPython board (hil/mpyboard): a live mosquitto, the project's HTTP server, ESP-IDF's OTA
rules on flash files, a reset that ends the process and boots what the bootloader picks.

The heap is bounded with -X heapsize=HEAP: 96K, the issue's heap, since the install runs
in a VM of its own (Agent._run_step) with the inflater's room held for its state and its
window and lent to the download and verify steps and to the install's response head
(docs/micropython.md). The board restarts its VM for a split heap on the way (split_at below
runs those restarts on purpose); the tests that count VM restarts or journal saves run at
ROOMY, where only their own faults restart it.
"""

import json
import os
import re
import shutil
import threading
import time

import pytest

from agent.core import messages
from agent.core.lifecycle import FINAL_STATUSES
from hil.mpyboard import flash
from hil.mpyboard.rig import MpyRig
from hil.scenarios import test_catalogue as catalogue

HEAP = "96K"
# With the journey unparked, the board idles and takes jobs, but cannot verify a signature in
# it. Parked (the default, agent/mpy/park.py), the verify step needs less heap than the idle
# board: no heap then idles but cannot verify. 108K until the heap resets' code (0.8 KiB):
# then the job's offer met a MemoryError there (docs/micropython.md); 110K until the flat
# journey tables (3.2 KiB less): the unparked verify then passed there in 1 run of 10.
TOO_SMALL = "106K"
T = 60
# MicroPython interns every name of a module it loads and never frees one. On this port its
# qstr pools double from 20 entries: six hold 1,260, and the seventh is one block of 1,280
# entries (15 KiB). At 96K (2026-12-08) the verify step's VM peaks at 1,217 (1,242 while it
# fetched the header again), the install's at 1,115-1,120 (1,167 while it verified the root).
QSTRS = re.compile(r"qstr pool: n_pool=(\d+), n_qstr=(\d+)")
QSTR_POOLS, QSTR_ROOM, QSTR_HEADROOM = 6, 1260, 16


# The tests that count a board's VM restarts or journal saves (a power cut at save N of the
# trial) run where the heap restarts none of its own: at HEAP the layout can bring one (the
# saves shift, and the restarts add to the count), and split_at's faults and cut_at's cuts
# are meant to be the only ones. Bundle fetches are counted at HEAP: a restart fetches
# nothing again (the download step's header is kept on flash, agent/mpy/steps.py).
ROOMY = "116K"
roomy = pytest.mark.mpy_heap(ROOMY)


@pytest.fixture
def rig(request, tmp_path, micropython):
    marker = request.node.get_closest_marker("mpy_heap")
    heap = marker.args[0] if marker else HEAP
    r = MpyRig(str(tmp_path / "rig"), heap=heap, trial_window_s=30)
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
    # No VM of the update came near its next qstr pool (docs/micropython.md, "qstr pools").
    pools = [(int(p), int(n)) for p, n in QSTRS.findall(rig.console_text())]
    assert pools and max(p for p, _ in pools) == QSTR_POOLS, pools
    peak = max(n for _, n in pools)
    assert peak <= QSTR_ROOM - QSTR_HEADROOM, (
        "a VM interned %d names; its %d pools hold %d, and the next one is a single block no"
        " heap this small has: fewer names in the board's modules, or a VM of its own for a"
        " step" % (peak, QSTR_POOLS, QSTR_ROOM)
    )


def test_failed_trial_rolls_back_after_the_reset(rig):
    job, final = run_job(rig, "1.1.0", defects=("refuse-session",))
    assert final["status"] == "RolledBack" and final["check"] == "charging-session", final
    row = catalogue.settled_row(rig, job["id"])
    assert row["booted"] == row["primary"] == "ota_0"
    # The bootloader aborted the unconfirmed image; the old one never left VALID.
    assert sorted(otadata(rig)) == [(1, 2), (2, 4)]
    # What a fleet controller reads back (agent/core/messages.py): the site it plans by, and
    # a rollback that blames the release, so 1.1.0 is never offered to this board again.
    inv = messages.parse_inventory(row)
    assert (inv["site"], inv["site_type"], inv["version"]) == ("home-7", "home-ac", "1.0.0")
    assert inv["rollbacks"] == ["1.1.0"] and row["rollbacks"][-1]["cause"] == "check-failed"


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


def test_a_bundle_replaced_between_verify_and_install_is_refused(rig):
    # The install fetches the bundle again: a server that serves another validly signed
    # bundle of the same version by then (another image) is caught by the header's hash,
    # before a byte of its payload reaches the slot.
    url = rig.release("1.1.0")
    job = rig.push_job("1.1.0", url, install_at=int(time.time()) + 6)
    rig.wait_status(job["id"], "InstallScheduled", T)  # verified; waits for install_at
    _replaced_and_refused(rig, url, job)


def _replaced_and_refused(rig, url, job):
    """Serve another validly signed 1.1.0 at `url`; the job must end refusing it."""
    other = rig.build_image("1.1.0", (), 4096)
    path = rig.images.files[url.rsplit("/", 1)[1]]
    shutil.copyfile(rig.kit.bundle_image(other, "1.1.0", name="other.cub"), path)
    final = rig.wait_status(job["id"], FINAL_STATUSES, T)
    assert final["status"] == "InstallationFailed" and final["reason"] == "payload-mismatch"
    assert "signed header changed since it was verified" in final["detail"], final
    assert otadata(rig)[1][0] == 0xFFFFFFFF  # set_boot never ran


def test_a_window_larger_than_the_board_holds_is_refused_before_writing(tmp_path, micropython):
    r = MpyRig(str(tmp_path / "rig"), heap=HEAP, window_bits=15)  # zlib's default: 32 KiB
    r.start()
    try:
        r.power_on()
        r.start_row = r.wait_online(30)
        job, final = run_job(r, "1.1.0")
        assert final["status"] == "InstallationFailed", final
        assert final["reason"] == "window-too-large", final
        assert otadata(r)[1][0] == 0xFFFFFFFF  # set_boot never ran
        assert len(re.findall(r.boot_banner, r.console_text())) == 1
    finally:
        r.close()


def test_a_bundle_replaced_across_a_power_cut_between_verify_and_install_is_refused(rig):
    # The install streams the bundle again after a power cut (or a reset for the heap): the
    # verify step pinned the header it passed for this job (steps.py verified.json), so
    # another validly signed bundle served by then is refused, not verified and installed.
    url = rig.release("1.1.0")
    with open(os.path.join(rig.board.dir, "cut_at"), "w") as f:
        f.write("4")  # the InstallScheduled save: verified, the install not begun
    job = rig.push_job("1.1.0", url, install_at=int(time.time()) + 8)
    rig.board.wait_line("POWER CUT at save 4", T, anywhere=True)
    _replaced_and_refused(rig, url, job)


def test_a_heap_too_small_to_verify_fails_safe_and_stays_cancellable(tmp_path, micropython):
    r = MpyRig(str(tmp_path / "rig"), heap=TOO_SMALL)
    r.start()
    r.edit_config(lambda cfg, _dir: cfg["install"].update(park_journey=False))
    try:
        r.power_on()
        r.start_row = r.wait_online(30)
        job = r.push_job("1.1.0", r.release("1.1.0"))
        # At this margin the header's fetch can run out first (a retry of the download) as
        # well as the verify step (resumed from the journal later): both fail safe.
        short = r.backend.wait_status(r.device_id, lambda s: "no-memory" in str(s.get("reason")), T)
        assert short["status"] in ("Downloaded", "DownloadPaused"), short
        assert short.get("retry_in_s", 1) > 0  # tried again later
        r.backend.cancel_job(r.device_id, job["id"])
        r.backend.wait_status(r.device_id, lambda s: s.get("reason") == "cancelled", T)
        names = [s["status"] for s in r.statuses(job["id"])]
        assert "InvalidSignature" not in names and "Installing" not in names, names
        assert len(re.findall(r.boot_banner, r.console_text())) == 1  # never reset
        assert otadata(r)[1][0] == 0xFFFFFFFF
        row = r.backend.wait_inventory(r.device_id, lambda row: row["booted"] == "ota_0", T)
        assert row["slots"]["ota_0"]["version"] == "1.0.0"
    finally:
        r.close()


@roomy
def test_resets_for_a_split_heap_carry_the_update_to_its_commit(rig):
    # The journey's read-back after the download and install steps and after the trial's
    # checks meets a MemoryError once (firmware.py split_at: the fault a 96K-100K heap
    # gives, injected at the tests' heap, where the rest of the update fits): the VM restarts
    # after each (machine.soft_reset(), the chip's boot goes on) with the outcome kept, no
    # step runs twice, and the trial's results commit the new slot in the boot that ran
    # them. The verify step reads nothing back: its VM always restarts with its outcome.
    with open(os.path.join(rig.board.dir, "split_at"), "w") as f:
        f.write("downloading,installing,trial")
    job = rig.push_job("1.1.0", rig.release("1.1.0"))
    final = rig.wait_status(job["id"], FINAL_STATUSES, T)
    assert final["status"] == "Committed", final
    text = rig.console_text()
    assert text.count("heap too split for the journey") == 3
    assert text.count("verified: a fresh VM for the install") == 1
    for kept in ("download-ok", "signature-ok", "install-ok", "check-results"):
        assert "after a reset for the heap: %s" % kept in text
    for step in ("download", "verify", "install", "trial"):
        assert text.count("phase %s: start" % step) == 1, step  # none ran again
    assert text.count("[rom] soft reset") == 4
    assert len(re.findall(rig.boot_banner, text)) == 2  # no reset of the chip but the switch
    assert otadata(rig)[1] == (2, 2)  # VALID: confirmed in its one trial boot
    names = [s["status"] for s in rig.statuses(job["id"])]
    for status in ("Downloaded", "SignatureVerified", "Installed", "InstallRebooting",
                   "Committed"):  # fmt: skip
        assert names.count(status) == 1, names
    assert catalogue.settled_row(rig, job["id"])["booted"] == "ota_1"
    assert not os.path.exists(os.path.join(rig.board.dir, "data", "heap-reset.json"))
    # The verify step's verdict on the signatures, beside the rotated root, for the install's
    # check in the next VM (agent/mpy/signed.py; its use is tested in test_mpy_trust.py).
    with open(os.path.join(rig.board.dir, "data", "signed.json")) as f:
        assert re.fullmatch(r"[0-9a-f]{64}", json.load(f)["signed"])


@roomy
def test_a_trial_failed_across_a_soft_reset_rolls_back(rig):
    with open(os.path.join(rig.board.dir, "split_at"), "w") as f:
        f.write("trial")
    job, final = run_job(rig, "1.1.0", defects=("refuse-session",))
    assert final["status"] == "RolledBack" and final["check"] == "charging-session", final
    text = rig.console_text()
    assert "after a reset for the heap: check-results in trial" in text
    assert text.count("phase trial: start") == 1
    assert catalogue.settled_row(rig, job["id"])["booted"] == "ota_0"


@roomy
def test_a_trial_no_vm_can_read_back_is_rolled_back_by_the_bootloader(rig):
    # The 96K end on this port: the checks pass, and no VM after them finds room for the
    # journey (split_at: the read-back after the checks, then every VM's first one). After
    # [install] heap_resets soft resets the board resets: ESP-IDF's bootloader aborts the
    # never-confirmed slot, and the old slot's boot reports RolledBack.
    with open(os.path.join(rig.board.dir, "split_at"), "w") as f:
        f.write("trial,boot:trial,boot:trial,boot:trial")
    job, final = run_job(rig, "1.1.0")
    assert final["status"] == "RolledBack", final
    text = rig.console_text()
    assert text.count("phase trial: start") == 1  # the checks ran once
    assert text.count("[rom] soft reset") == 4  # the install's fresh VM, then the trial's 3
    assert "the bootloader rolls ota_1 back" in text
    assert catalogue.settled_row(rig, job["id"])["booted"] == "ota_0"
    assert otadata(rig)[1] == (2, 4)  # ABORTED: booted once, never confirmed
    names = [s["status"] for s in rig.statuses(job["id"])]
    assert "Committed" not in names, names


# Journal saves of a good update, in order: accepted (DownloadScheduled), Downloading,
# Downloaded, InstallScheduled, Installing, Installed, Rebooting | new slot: Trial, Committed,
# Idle. A cut at the Trial save lands before mark_app_valid_cancel_rollback: ESP-IDF's
# bootloader aborts the unconfirmed image at the next boot, and the agent, back on the old
# slot after a power-on reset with attempts left, arms the new slot again: it commits too.
CUTS = [(n, "Committed") for n in range(1, 11)]


@pytest.mark.parametrize("cut, expected", CUTS, ids=["save-%d" % n for n, _ in CUTS])
def test_power_cut_at_every_journal_step_resumes(rig, cut, expected):
    with open(os.path.join(rig.board.dir, "cut_at"), "w") as f:
        f.write(str(cut))
    job = rig.push_job("1.1.0", rig.release("1.1.0"))
    # anywhere: the first saves can come before this line runs (the job is handled at once)
    rig.board.wait_line("POWER CUT at save %d" % cut, T, anywhere=True)
    final = rig.wait_status(job["id"], FINAL_STATUSES, T)
    assert final["status"] == expected, final
    booted = catalogue.settled_row(rig, job["id"])["booted"]
    assert booted == ("ota_1" if expected == "Committed" else "ota_0")
    # The cut after the last save comes after the final status: wait for it, do not race it.
    rig.board.wait_line("[rom] power off", T, anywhere=True)


@pytest.mark.parametrize("kept", [True, False], ids=["header-kept", "header-lost"])
def test_a_bundle_gone_after_a_power_cut_at_downloaded_fails_as_a_fetch(rig, kept):
    # Back at Downloaded after the cut, the board verifies the header the download step kept
    # on flash (header.bin) and the install's fetch finds the bundle gone; with that file
    # lost, the verify step fetches the header again and finds it gone. Either way a failed
    # fetch of the stage it reached, never InvalidSignature (before the fetch failed as one).
    with open(os.path.join(rig.board.dir, "cut_at"), "w") as f:
        f.write("3")  # the Downloaded save
    url = rig.release("1.1.0")
    name = url.rsplit("/", 1)[1]

    def on_line(line):  # the test pulls the plug itself, after taking the bundle away
        if line.startswith("POWER CUT"):
            rig.images.files.pop(name)
            if not kept:
                os.remove(os.path.join(rig.board.dir, "data", "header.bin"))
            threading.Thread(target=rig.board._cut_and_restore, daemon=True).start()

    rig.board.on_line = on_line
    job = rig.push_job("1.1.0", url, retries=0)
    final = rig.wait_status(job["id"], FINAL_STATUSES, T)
    assert final["status"] == ("InstallationFailed" if kept else "DownloadFailed"), final
    assert "404" in final["detail"], final
    names = [s["status"] for s in rig.statuses(job["id"])]
    assert ("SignatureVerified" in names) == kept and "InvalidSignature" not in names, names
    assert otadata(rig)[1][0] == 0xFFFFFFFF


def test_a_dropped_connection_mid_install_resumes_with_range(tmp_path, micropython):
    r = MpyRig(str(tmp_path / "rig"), heap=HEAP, link_rate=512 * 1024)
    r.start()
    try:
        r.power_on()
        r.start_row = r.wait_online(30)
        url = r.release("1.1.0", pad_bytes=1536 * 1024)  # half random: about 0.8 MB stored
        job = r.push_job("1.1.0", url)
        r.wait_status(job["id"], "Installing", T)
        r.network.cut_after(256 * 1024)
        assert r.network.wait_cut(T)
        final = r.wait_status(job["id"], FINAL_STATUSES, T)
        assert final["status"] == "Committed", final
        ranges = [q for q in r.images.requests if q["range"]]
        assert ranges and ranges[0]["if_range"], r.images.requests  # resumed, not restarted
    finally:
        r.close()


# The scenario catalogue (hil/scenarios) against the MicroPython board.


def test_catalogue_good_update(rig):
    catalogue.test_good_update_commits(rig)


def test_catalogue_power_cut_after_installed(rig):
    # On this board the "env write" is set_boot's otadata sector write, right after Installed.
    catalogue.test_power_cut_during_environment_write(rig)


def test_catalogue_bad_signature(rig):
    catalogue.test_bad_signature_refused_with_board_untouched(rig)


def test_catalogue_crash_on_boot(rig):
    catalogue.test_crash_looping_firmware_falls_back_by_boot_counting(rig)
    # ESP-IDF's bootloader aborts it after each panic; the agent arms it again while the
    # attempts last (a panic is HARD_RESET, a cause it cannot tell from esp_restart())
    assert len(re.findall(r"\[rom\] booting ota_1", rig.console_text())) == 3


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


@roomy
def test_power_cut_during_the_trial_resumes_it_on_the_new_slot(rig):
    with open(os.path.join(rig.board.dir, "cut_at"), "w") as f:
        f.write("8")  # the Trial save: the new image runs, unconfirmed
    job, final = run_job(rig, "1.1.0")
    assert final["status"] == "Committed" and final["resets"] == ["power-on"], final
    again = [s for s in rig.statuses(job["id"]) if s["status"] == "InstallRebooting"][1:]
    assert [s["evidence"]["reset"] for s in again] == ["power-on"]  # armed once more, and why
    # set_boot again after the abort: ESP-IDF counts from the valid entry (seq 1), so seq 2
    # is written over the aborted one, and is VALID after the trial
    assert otadata(rig) == [(1, 2), (2, 2)]
    assert catalogue.settled_row(rig, job["id"])["booted"] == "ota_1"


@roomy
@pytest.mark.parametrize("split", [False, True], ids=["", "vm-reset-at-boot"])
def test_power_losses_that_use_up_the_attempts_roll_back_as_power_loss(rig, split):
    with open(os.path.join(rig.board.dir, "cut_at"), "w") as f:
        f.write("8,10,12")  # every Trial save of the three boots the new slot gets
    if split:
        # Each boot of the old slot after a cut resets its VM for the heap before the
        # journey takes the boot's cause (as at 96K): the VM after reads SOFT_RESET, and
        # the chip's boot id and cause (boot.json) keep the power loss a power loss.
        with open(os.path.join(rig.board.dir, "split_at"), "w") as f:
            f.write("boot:trial,boot:trial,boot:trial")
    job, final = run_job(rig, "1.1.0")
    assert final["status"] == "RolledBack", final
    assert final["cause"] == "power-loss", final  # not the release's: a fleet does not halt
    text = rig.console_text()
    assert text.count("heap too split for the journey in trial") == (3 if split else 0)
    booted_new = re.findall(r"\[rom\] booting ota_1", rig.console_text())
    assert len(booted_new) == 3  # trial_attempts
    assert catalogue.settled_row(rig, job["id"])["booted"] == "ota_0"


def test_the_steps_return_the_journeys_events():
    """The steps name the journey's events by value: lifecycle is parked while they run."""
    from agent.core import lifecycle
    from agent.mpy import steps

    names = ("DOWNLOAD_OK", "DOWNLOAD_ERROR", "SIGNATURE_OK", "SIGNATURE_BAD", "INSTALL_OK",
             "VERIFY_ERROR")  # fmt: skip
    assert [getattr(steps, n) for n in names] == [getattr(lifecycle, n) for n in names]


def test_esp32_reset_reasons_become_boot_facts():
    """The constants of MicroPython's esp32 `machine` (from its stubs); power-on, the watchdog
    and a soft reset (the VM alone: an agent restart) name a cause, the rest stays unknown
    (never guessed to be a power loss)."""
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
                    "SOFT_RESET": "agent-restart", "DEEPSLEEP_RESET": "unknown"}  # fmt: skip
    from agent.core import resets

    assert resets.normalise(seen["SOFT_RESET"]) == resets.AGENT_RESTART
