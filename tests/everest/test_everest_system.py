"""The agent behind EVerest: a virtual board whose agent implements EVerest's `system`
interface over system_API's MQTT topics, driven by an EVerest-side test double
(tests/everest/double.py) through a good and a failing update. Reboots and slots are real."""

import datetime

import pytest

from hil.virtual.rig import VirtualRig
from tests.everest.double import EverestDouble
from tests.ocpp.conftest import QUICK_TRIAL

pytestmark = pytest.mark.timeout(240)
FINAL = ("Installed", "InstallationFailed", "InstallVerificationFailed", "InvalidSignature",
         "DownloadFailed")  # fmt: skip


@pytest.fixture(scope="module")
def everest(tmp_path_factory):
    rig = VirtualRig(str(tmp_path_factory.mktemp("everest")), watchdog_s=10.0,
                     trial_window_s=30, ocpp="everest", agent_overrides=QUICK_TRIAL)  # fmt: skip
    rig.start()
    double = None
    try:
        double = EverestDouble(rig.broker.port, auto_allow=False).start()
        rig.power_on()
        rig.wait_online(60)
        with double.cond:
            assert double.cond.wait_for(lambda: double.boot_reasons, 60)
        yield rig, double
    finally:
        if double is not None:
            double.close()
        rig.close()


def request(rig, request_id, fw):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    return {
        "request_id": request_id, "location": fw["location"],
        "retries": 2, "retry_interval_s": 1,  # EVerest's convention: OCPP retries + 1
        "retrieve_timestamp": past.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "signing_certificate": fw["signing_certificate"], "signature": fw["signature"],
    }  # fmt: skip


def test_everest_drives_a_good_update_to_installed_only_after_allow(everest):
    rig, double = everest
    boots = len(double.boot_reasons)
    fw = rig.ocpp_release("1.1.0")
    assert double.update_firmware(request(rig, 31, fw)) == "Accepted"
    double.wait_status(31, "SignatureVerified")
    # An A/B station writes the inactive slot at once, but behind EVerest it never activates
    # (reboots) before allow_firmware_installation.
    double.wait_status(31, "Installing")
    with pytest.raises(TimeoutError):
        double.wait_status(31, "InstallRebooting", timeout=1.5)
    double.allow_installation()
    rebooting = double.wait_status(31, "InstallRebooting")
    assert rebooting[0] > double.allowed[-1]
    final = double.wait_status(31, FINAL, timeout=90)
    assert final[1] == "Installed", double.statuses
    names = double.names(31)
    assert names[:3] == ["Downloading", "Downloaded", "SignatureVerified"]
    assert names.index("Installing") < names.index("InstallRebooting") < names.index("Installed")
    # After the reboot libocpp asked the boot reason (FirmwareUpdate, so 1.6 sends
    # FirmwareUpdated), and Installed came only after its BootNotification was accepted.
    assert double.boot_reasons[boots:] == ["FirmwareUpdate"]
    row = rig.backend.wait_inventory(rig.device_id, lambda r: (r.get("last_job") or {}).get(
        "result") == "Committed", 30)  # fmt: skip
    assert row["slots"][row["booted"]]["version"] == "1.1.0"
    # communication_check `true` at least every 5 s while the agent runs, `false` when it
    # stops for the reboot.
    running = [t for t, v in double.checks if v is True]
    gaps = [b - a for a, b in zip(running, running[1:])]
    assert sorted(gaps)[-2] < 5.0 and [v for _, v in double.checks].count(False) >= 1
    assert double.violations == []


def test_everest_failing_update_ends_installation_failed(everest):
    rig, double = everest
    double.auto_allow = True
    before = rig.inventory()["booted"]
    fw = rig.ocpp_release("1.2.0", ("refuse-session",))
    assert double.update_firmware(request(rig, 32, fw)) == "Accepted"
    final = double.wait_status(32, FINAL, timeout=90)
    assert final[1] == "InstallationFailed", double.statuses
    assert "Installed" not in double.names(32)
    row = rig.backend.wait_inventory(rig.device_id, lambda r: (r.get("last_job") or {}).get(
        "result") == "RolledBack", 30)  # fmt: skip
    assert row["booted"] == row["primary"] == before
    assert double.violations == []


def test_everest_requests_without_a_signature_are_rejected(everest):
    rig, double = everest
    fw = rig.ocpp_release("1.3.0")
    unsigned = {"request_id": -1, "location": fw["location"]}  # a classic 1.6 UpdateFirmware
    assert double.update_firmware(unsigned) == "Rejected"
    assert double.request("is_reset_allowed", "Soft") is True
    assert double.violations == []


def test_everest_location_naming_a_local_file_never_reads_it(everest):
    """A CSMS (through libocpp) names file:///etc/passwd (review #12): the request is taken
    (the signing certificate is valid) and ends DownloadFailed; nothing outside
    [download] file_dir is read, and this board has none."""
    rig, double = everest
    fw = dict(rig.ocpp_release("1.5.0"), location="file:///etc/passwd")
    assert double.update_firmware(request(rig, 42, fw)) == "Accepted"
    final = double.wait_status(42, FINAL, timeout=60)
    assert final[1] == "DownloadFailed", double.statuses
    assert "Downloaded" not in double.names(42)
    assert double.violations == []
