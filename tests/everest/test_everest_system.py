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


def test_everest_bad_signature_ends_invalid_signature_before_the_slot_is_touched(everest):
    # Unlike EVerest's Linux_Systemd_Rauc module, the OCPP signature is checked.
    rig, double = everest
    before = rig.inventory()
    fw = dict(rig.ocpp_release("1.2.1", bad_signature=True))
    assert double.update_firmware(request(rig, 33, fw)) == "Accepted"
    final = double.wait_status(33, FINAL, timeout=60)
    assert final[1] == "InvalidSignature", double.statuses
    assert double.names(33) == ["Downloading", "Downloaded", "InvalidSignature"]
    row = rig.backend.wait_inventory(rig.device_id, lambda r: (r.get("last_job") or {}).get(
        "result") == "InvalidSignature", 30)  # fmt: skip
    assert row["booted"] == before["booted"] and row["primary"] == before["primary"]
    assert double.violations == []


def test_everest_install_timestamp_is_honoured(everest):
    # Unlike EVerest's Linux_Systemd_Rauc module, install_timestamp holds the installation.
    rig, double = everest
    double.auto_allow = True
    install_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3)
    req = dict(request(rig, 34, rig.ocpp_release("1.2.2")),
               install_timestamp=install_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"))  # fmt: skip
    assert double.update_firmware(req) == "Accepted"
    double.wait_status(34, "InstallScheduled")
    double.wait_status(34, "Installing")
    assert datetime.datetime.now(datetime.timezone.utc) >= install_at.replace(microsecond=0)
    assert double.wait_status(34, FINAL, timeout=90)[1] == "Installed", double.statuses
    names = double.names(34)
    assert names.index("SignatureVerified") < names.index("InstallScheduled") < names.index(
        "Installing")  # fmt: skip

    def committed(row):
        job = row.get("last_job") or {}
        return job.get("result") == "Committed" and job.get("id", "").startswith("ocpp-34-")

    rig.backend.wait_inventory(rig.device_id, committed, 30)
    assert double.violations == []


def test_everest_requests_without_a_signature_are_rejected(everest):
    rig, double = everest
    fw = rig.ocpp_release("1.3.0")
    unsigned = {"request_id": -1, "location": fw["location"]}  # a classic 1.6 UpdateFirmware
    assert double.update_firmware(unsigned) == "Rejected"
    assert double.request("is_reset_allowed", "Soft") is True
    assert double.violations == []


def test_everest_location_naming_a_local_file_is_rejected(everest):
    """A CSMS (through libocpp) names file:///etc/passwd (review #12): OCPP's locations are
    HTTP(S) only, so the request is Rejected before it becomes a job; nothing is read."""
    rig, double = everest
    fw = dict(rig.ocpp_release("1.5.0"), location="file:///etc/passwd")
    assert double.update_firmware(request(rig, 42, fw)) == "Rejected"
    assert double.names(42) == []
    assert double.violations == []


def test_everest_garbage_requests_are_refused_and_the_agent_keeps_answering(everest):
    # What a broken EVerest (or anything else on its broker) might publish: each is refused
    # with one log line; the agent keeps answering, and nothing reaches the engine.
    rig, double = everest
    console = len(rig.console_text())
    base = double.base + "/e2m/"
    garbage = [
        ("update_firmware", b"\xff\xfe not json"),
        ("update_firmware", b"[" * 60000),  # nested past the parser's recursion limit
        ("update_firmware", b'{"headers": ["replyTo"], "payload": {}}'),
        ("update_firmware", b'{"headers": {"replyTo": 42}, "payload": {}}'),
        ("update_firmware", b'{"headers": {"replyTo": "x"}, "payload": "' + b"a" * 70000 + b'"}'),
        ("get_boot_reason", b'{"headers": {"replyTo": "everest/#"}}'),  # not a topic to publish
        ("no_such_operation", b"{}"),
    ]
    for operation, raw in garbage:
        double.channel.publish_raw(base + operation, raw, qos=1, wait_s=5)
    for bad in ({"request_id": "7", "location": "https://x/y"},
                {"request_id": 7, "location": 42},
                {"request_id": 7, "location": "https://x/y", "retry_interval_s": "1"},
                {"request_id": 7, "location": "https://x/y", "install_timestamp": "soon"},
                ["not", "an", "object"]):  # fmt: skip
        assert double.request("update_firmware", bad) == "Rejected"
    assert double.request("is_reset_allowed", "Soft") is True
    assert double.request("get_boot_reason") in ("PowerUp", "FirmwareUpdate")
    assert "Traceback" not in rig.console_text()[console:]
    assert double.violations == []


def test_without_ocpp_consumer_api_the_trial_does_not_wait_for_everest_boot(tmp_path):
    # Only ocpp_consumer_API's boot_notification_response tells the agent that the CSMS
    # accepted the boot; without it the trial's communication check must not wait for one
    # (it would fail every trial) but use its own probe.
    from agent.config import Config
    from agent.control.frontends import Frontends
    from agent.frontends.channel import FakeChannel
    from agent.frontends.everest import EverestSystem
    from agent.frontends.local_api import LocalApi

    def config(everest):
        raw = {"device": {"id": "cp-1", "model": "M", "hardware_revision": "r"},
               "slots": {"A": {"rootfs": "a"}, "B": {"rootfs": "b"}},
               "bootloader": {"backend": "simulated"}, "state": {"dir": "state"},
               "everest": everest, "local_api": {"socket": "agent.sock"}}  # fmt: skip
        return Config(raw, str(tmp_path / "agent.toml"))

    alone = EverestSystem(config({}), channel=FakeChannel(device_id="cp-1"))
    assert Frontends([alone]).csms_links() == []
    told = EverestSystem(config({"ocpp_module_id": "ocpp"}), channel=FakeChannel(device_id="cp-1"))
    local = LocalApi(config({}))
    assert Frontends([alone, told, local]).csms_links() == [told, local]
