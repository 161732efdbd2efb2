"""OCPP 2.0.1 block L conformance cases (OCA test tool, Part 6: TC_L_xx_CS) re-created on the
virtual board: a real OCPP-J CSMS on loopback sends the requests to the board's charging stack,
which owns the connection and drives the update agent through its local API; reboots and slots
are real. Each test is named after its case; docs/ocpp.md maps them to the requirements.

Our station is an A/B station: it downloads and writes the inactive slot during a transaction
(PICS AQ-7 supported) unless InternalCtrlr.DeferFirmwareDownloadDuringTransaction is set, and
activates (reboots) only when no transaction runs.
"""

import time

import pytest

from tests.ocpp.conftest import FINAL, in_order, iso

pytestmark = pytest.mark.timeout(240)


def installed_after_reboot(c, request_id, version, delivered_before_reboot=True):
    """Installed for the request, sent by the new firmware after its BootNotification
    (reason FirmwareUpdate) was accepted, then the security event FirmwareUpdated."""
    installed = c.wait_status(request_id, FINAL)
    assert installed["status"] == "Installed", c.statuses()
    c.wait_event("FirmwareUpdated")
    boots = [b for b in c.boots() if b["station"]["firmware_version"] == version]
    assert boots and boots[0]["reason"] == "FirmwareUpdate", c.boots()
    rebooting = [e for _, e in c.since("firmware") if e["status"] == "InstallRebooting"]
    assert c.pos(boots[0]) < c.pos(installed)
    if delivered_before_reboot:  # the agent waited for the stack to confirm it
        assert c.pos(rebooting[-1]) < c.pos(boots[0])
    # Nothing from the new firmware before its BootNotification was accepted (B01.FR.08).
    after = [e for k, e in c.since() if c.pos(e) > c.pos(boots[0]) and k == "firmware"]
    assert after and all(e["request_id"] == request_id for e in after)
    return installed


def test_TC_L_01_secure_firmware_update_installation_successful(station201):
    c = station201
    c.begin()
    fw = c.release()
    assert c.update(1, fw) == "Accepted"
    installed_after_reboot(c, 1, "1.%d.0" % c.versions)
    seen = c.statuses(1)
    assert in_order(seen, ["Downloading", "Downloaded", "SignatureVerified", "Installing",
                           "InstallRebooting", "Installed"]), seen  # fmt: skip
    assert "DownloadScheduled" not in seen and "InstallScheduled" not in seen
    # Connectors Unavailable while the update is pending, Available again on the new firmware
    # before Installed (L01.FR.07; restored at the end state).
    connectors = [(c.pos(e), e["status"]) for _, e in c.since("connectors")]
    unavailable = [p for p, s in connectors if s == "Unavailable"]
    boot = c.boots()[-1]
    assert unavailable and unavailable[0] < c.pos(boot)
    # ... after the status that explains it (OCTT's order: SignatureVerified, Unavailable).
    verified = [e for _, e in c.since("firmware") if e["status"] == "SignatureVerified"][0]
    assert c.pos(verified) < unavailable[0]
    assert any(s == "Available" and p > c.pos(boot) for p, s in connectors)
    row = c.settled(1, "Committed")
    assert row["booted"] == row["primary"] == "B"


def test_TC_L_02_secure_firmware_update_install_scheduled(station201):
    c = station201
    c.begin()
    install_at = time.time() + 3
    assert c.update(2, c.release(), install=iso(3)) == "Accepted"
    c.wait_status(2, "InstallScheduled")
    installing = c.wait_status(2, "Installing")
    assert time.time() >= install_at - 1  # not before installDateTime (whole seconds)
    seen = c.statuses(2)
    assert in_order(seen, ["Downloading", "Downloaded", "SignatureVerified", "InstallScheduled",
                           "Installing"]), seen  # fmt: skip
    assert installing
    installed_after_reboot(c, 2, "1.%d.0" % c.versions)
    c.settled(2, "Committed")


def test_TC_L_03_secure_firmware_update_download_scheduled(station201):
    c = station201
    c.begin()
    retrieve_at = time.time() + 3
    assert c.update(3, c.release(), retrieve=iso(3)) == "Accepted"
    c.wait_status(3, "DownloadScheduled")
    c.wait_status(3, "Downloading")
    assert time.time() >= retrieve_at - 1  # not before retrieveDateTime
    installed_after_reboot(c, 3, "1.%d.0" % c.versions)
    seen = c.statuses(3)
    assert in_order(seen, ["DownloadScheduled", "Downloading", "Downloaded", "SignatureVerified",
                           "Installing", "Installed"]), seen  # fmt: skip
    c.settled(3, "Committed")


def test_TC_L_05_secure_firmware_update_invalid_certificate(station201):
    c = station201
    c.begin()
    fw = dict(c.release(), signing_certificate=c.rig.mfr.expired_signing_certificate())
    assert c.update(5, fw) in ("InvalidCertificate", "RevokedCertificate")
    event = c.wait_event("InvalidFirmwareSigningCertificate", 10)
    assert "valid" in event["tech_info"]
    assert c.statuses(5) == []  # no update was started


def test_TC_L_06_secure_firmware_update_invalid_signature(station201):
    c = station201
    c.begin()
    boots = len(c.csms.boots)
    assert c.update(6, c.release(bad_signature=True)) == "Accepted"
    final = c.wait_status(6, FINAL)
    assert final["status"] == "InvalidSignature"
    c.wait_event("InvalidFirmwareSignature", 10)
    assert c.statuses(6) == ["Downloading", "Downloaded", "InvalidSignature"]
    row = c.settled(6, "InvalidSignature")
    assert row["booted"] == row["primary"] and len(c.csms.boots) == boots  # untouched


def test_signature_that_is_not_base64_is_an_invalid_signature(station201):
    # The schema takes any string up to 800 characters; garbage is a signature that fails.
    c = station201
    c.begin()
    assert c.update(61, dict(c.release(), signature="not base64 at all!!!")) == "Accepted"
    assert c.wait_status(61, FINAL)["status"] == "InvalidSignature"
    # techInfo is the engine's detail of the failure (statuses that end a job carry it)
    assert "not base64" in c.wait_event("InvalidFirmwareSignature", 10)["tech_info"]
    assert "InstallVerificationFailed" not in c.statuses(61)
    c.settled(61, "InvalidSignature")


def test_TC_L_07_secure_firmware_update_download_failed(station201):
    c = station201
    c.begin()
    fw = c.release()
    fw["location"] += "_does_not_exist"
    path = "/" + fw["location"].rsplit("/", 1)[1]
    assert c.update(7, fw, retries=1, interval=1) == "Accepted"
    final = c.wait_status(7, FINAL)
    assert final["status"] == "DownloadFailed"
    assert in_order(c.statuses(7), ["Downloading", "DownloadFailed"])
    # retries + 1 attempts, retryInterval apart; DownloadFailed only after the last (L01.FR.30)
    tries = [r["at"] for r in c.rig.images.requests if r["path"] == path]
    assert len(tries) == 2 and tries[1] - tries[0] >= 0.9, tries
    c.settled(7, "DownloadFailed")


def test_TC_L_08_secure_firmware_update_installation_failed(station201):
    c = station201
    c.begin()
    row = c.rig.inventory()
    old = row["booted"]
    assert c.update(8, c.release(("crash-on-boot",))) == "Accepted"
    final = c.wait_status(8, FINAL, timeout=90)
    assert final["status"] == "InstallationFailed", c.statuses(8)
    expected = ["Downloading", "Downloaded", "SignatureVerified", "Installing",
                "InstallRebooting", "InstallationFailed"]  # fmt: skip
    assert in_order(c.statuses(8), expected)
    assert "Installed" not in c.statuses(8)
    row = c.settled(8, "RolledBack")
    assert row["booted"] == row["primary"] == old  # the bootloader fell back


def test_TC_L_10_secure_firmware_update_accepted_canceled(station201):
    c = station201
    c.begin()
    assert c.update(101, c.release(), retrieve=iso(60)) == "Accepted"
    c.wait_status(101, "DownloadScheduled")
    assert c.update(102, c.release()) == "AcceptedCanceled"
    installed_after_reboot(c, 102, "1.%d.0" % c.versions)
    assert in_order(c.statuses(102), ["Downloading", "Downloaded", "SignatureVerified"])
    # From the second request on, every notification refers to it.
    assert c.statuses(101) == ["DownloadScheduled"]
    c.settled(102, "Committed")


def test_TC_L_11_secure_firmware_update_unable_to_cancel(station201):
    c = station201
    c.begin()
    assert c.update(111, c.release()) == "Accepted"
    version = "1.%d.0" % c.versions
    c.csms.wait_for("boots", lambda b: b["station"]["firmware_version"] == version, 60)
    # The new slot was handed to the bootloader and booted: the update cannot be cancelled.
    assert c.update(112, c.release()) == "Rejected"
    installed_after_reboot(c, 111, version)
    assert c.statuses(112) == []
    c.settled(111, "Committed")


def _transaction(c, token):
    stack = c.rig.stack()
    assert stack.request("start", id_tag=token)["ok"]
    c.csms.wait_for("transactions", lambda t: t["event"] == "Started" and t["id_token"] == token
                    and c.pos(t) >= c.mark, 30)  # fmt: skip
    return stack


def test_TC_L_13_unable_to_download_with_ongoing_transaction_new_sessions_not_allowed(station201):
    c = station201
    c.begin()
    c.set_variable("ChargingStation", "AllowNewSessionsPendingFirmwareUpdate", "false")
    c.set_variable("InternalCtrlr", "DeferFirmwareDownloadDuringTransaction", "true")
    try:
        stack = _transaction(c, "TC-L-13")
        assert c.update(13, c.release()) == "Accepted"
        scheduled = c.wait_status(13, "DownloadScheduled")  # busy charging (L01.FR.13)
        with pytest.raises(TimeoutError):  # and it stays so while the car charges
            c.wait_status(13, "Downloading", timeout=1.5)
        stack.request("stop")
        # The connector that became free stays Unavailable (L01.FR.07): no new session.
        unavailable = c.csms.wait_for("connectors", lambda e: e["status"] == "Unavailable"
                                      and c.pos(e) >= c.mark, 30)  # fmt: skip
        assert c.pos(scheduled) < c.pos(unavailable)  # the status that explains it first
        refused = stack.request("start", id_tag="TC-L-13-B")
        assert not refused["ok"] and "unavailable" in refused["reason"]
        installed_after_reboot(c, 13, "1.%d.0" % c.versions)
        ended = c.csms.wait_for("transactions", lambda t: t["id_token"] == "TC-L-13"
                                and t["event"] == "Ended", 5)  # fmt: skip
        downloading = [e for _, e in c.since("firmware") if e["status"] == "Downloading"][0]
        assert c.pos(ended) < c.pos(downloading)
        c.settled(13, "Committed")
    finally:
        c.set_variable("InternalCtrlr", "DeferFirmwareDownloadDuringTransaction", "false")


def test_TC_L_15_unable_to_activate_with_ongoing_transaction_new_sessions_not_allowed(station201):
    c = station201
    c.begin()
    c.set_variable("ChargingStation", "AllowNewSessionsPendingFirmwareUpdate", "false")
    stack = _transaction(c, "TC-L-15")
    assert c.update(15, c.release()) == "Accepted"
    # Downloaded and written during the transaction; the activation waits (L01.FR.33).
    waiting = c.wait_status(15, "InstallRebooting")
    seen = c.statuses(15)
    assert in_order(seen, ["Downloading", "Downloaded", "SignatureVerified", "Installing"]), seen
    with pytest.raises(TimeoutError):  # no reboot while the car charges
        c.csms.wait_for("boots", lambda b: c.pos(b) > c.pos(waiting), 1.5)
    stack.request("stop")
    ended = c.csms.wait_for("transactions", lambda t: t["id_token"] == "TC-L-15"
                            and t["event"] == "Ended", 30)  # fmt: skip
    installed_after_reboot(c, 15, "1.%d.0" % c.versions)
    reboot = [b for b in c.boots() if b["reason"] == "FirmwareUpdate"][0]
    assert c.pos(ended) < c.pos(reboot)
    unavailable = [e for _, e in c.since("connectors") if e["status"] == "Unavailable"]
    assert unavailable and c.pos(ended) < c.pos(unavailable[0]) < c.pos(reboot)
    c.settled(15, "Committed")


def test_TC_L_16_able_to_update_with_ongoing_transaction(station201):
    c = station201
    c.begin()
    c.set_variable("ChargingStation", "AllowNewSessionsPendingFirmwareUpdate", "true")
    try:
        stack = _transaction(c, "TC-L-16")
        assert c.update(16, c.release()) == "Accepted"
        installing = c.wait_status(16, "Installing")
        c.wait_status(16, "InstallRebooting")  # installed, activated when idle
        stack.request("stop")
        ended = c.csms.wait_for("transactions", lambda t: t["id_token"] == "TC-L-16"
                                and t["event"] == "Ended", 30)  # fmt: skip
        assert c.pos(installing) < c.pos(ended)  # installed while the car charged
        installed_after_reboot(c, 16, "1.%d.0" % c.versions)
        # New sessions stayed allowed: the connector never went Unavailable.
        assert "Unavailable" not in [e["status"] for _, e in c.since("connectors")]
        c.settled(16, "Committed")
    finally:
        c.set_variable("ChargingStation", "AllowNewSessionsPendingFirmwareUpdate", "false")


def test_TC_L_18_missing_signing_certificate_and_signature(station201):
    c = station201
    c.begin()
    fw = {"location": c.release()["location"]}
    assert c.update(18, fw) in ("Rejected", "InvalidCertificate")
    assert c.statuses(18) == []


def test_trigger_message_firmware_status_is_idle_after_installed(station201):
    # L01.FR.25/26, F06.FR.16: Idle without requestId when the last status was Installed.
    from ocpp.v201 import call

    c = station201
    c.begin()
    last = c.csms.firmware[-1] if c.csms.firmware else None
    reply = c.csms.call(
        c.station, call.TriggerMessage(requested_message="FirmwareStatusNotification")
    )
    assert str(reply.status) == "Accepted"
    triggered = c.csms.wait_for("firmware", lambda e: c.pos(e) >= c.mark, 10)
    if last is None or last["status"] == "Installed":
        assert (triggered["status"], triggered["request_id"]) == ("Idle", None)
    else:
        assert (triggered["status"], triggered["request_id"]) == (last["status"],
                                                                  last["request_id"])  # fmt: skip


def test_manufacturer_root_rotation_with_201_certificate_messages(station201):
    import os

    from ocpp.v201 import call

    from agent.trust.manufacturer import hash_data
    from hil.release import ManufacturerPki

    c = station201
    workdir = os.path.join(c.rig.dir, "rotation")
    os.makedirs(workdir, exist_ok=True)
    new = ManufacturerPki(workdir)
    get = call.GetInstalledCertificateIds(certificate_type=["ManufacturerRootCertificate"])
    before = c.csms.call(c.station, get).certificate_hash_data_chain
    install = call.InstallCertificate(certificate_type="ManufacturerRootCertificate",
                                      certificate=new.pem(new.root))  # fmt: skip
    assert str(c.csms.call(c.station, install).status) == "Accepted"
    after = c.csms.call(c.station, get).certificate_hash_data_chain
    assert len(after) == len(before) + 1
    assert {e["certificate_type"] for e in after} == {"ManufacturerRootCertificate"}
    delete = call.DeleteCertificate(certificate_hash_data=hash_data(new.root))
    assert str(c.csms.call(c.station, delete).status) == "Accepted"
    assert len(c.csms.call(c.station, get).certificate_hash_data_chain) == len(before)
    # The provisioned root is the OEM's: the CSMS cannot delete it.
    provisioned = before[0]["certificate_hash_data"]
    delete = call.DeleteCertificate(certificate_hash_data=provisioned)
    assert str(c.csms.call(c.station, delete).status) == "Failed"


def test_detached_signature_alone_never_makes_a_plain_file_installable(station201):
    # A correctly signed file that is not one of our bundles (no signed manifest: no version,
    # no compatibility, no anti-rollback) is refused before the slot is touched: its
    # signature verified, the firmware's verification failed (L01.FR.29), no security event.
    c = station201
    c.begin()
    fw = c.release()
    name = "plain-%d.bin" % c.versions
    path = c.rig.images.files[fw["location"].rsplit("/", 1)[1]] + ".plain"
    with open(path, "wb") as f:
        f.write(b"\x7fELF a raw firmware image " * 1000)
    c.rig.images.files[name] = path
    fw = dict(fw, location=fw["location"].rsplit("/", 1)[0] + "/" + name,
              signature=c.rig.mfr.sign(path))  # fmt: skip
    assert c.update(41, fw) == "Accepted"
    assert c.wait_status(41, FINAL)["status"] == "InstallVerificationFailed"
    assert c.statuses(41) == ["Downloading", "Downloaded", "SignatureVerified",
                              "InstallVerificationFailed"]  # fmt: skip
    c.settled(41, "InvalidSignature")  # the engine's own word, on MQTT
    assert [e for _, e in c.since("security_events")] == []


def test_file_swapped_between_verify_and_install_is_never_activated(station201):
    # The install streams the file again; the server now serves another bundle, validly
    # signed by the release key but not the file the CSMS signed. The bytes written are
    # hashed and checked against the detached signature before the slot may be tried.
    c = station201
    c.begin()
    row = c.rig.inventory()
    boots = len(c.csms.boots)
    fw, other = c.release(), c.release()
    name = fw["location"].rsplit("/", 1)[1]
    signed_path = c.rig.images.files[name]
    assert c.update(51, fw, install=iso(3)) == "Accepted"
    c.wait_status(51, "InstallScheduled")
    c.rig.images.files[name] = c.rig.images.files[other["location"].rsplit("/", 1)[1]]
    try:
        assert c.wait_status(51, FINAL)["status"] == "InvalidSignature", c.statuses(51)
        c.wait_event("InvalidFirmwareSignature", 10)
        assert "Installing" in c.statuses(51) and "InstallRebooting" not in c.statuses(51)
        after = c.settled(51, "InvalidSignature")
    finally:
        c.rig.images.files[name] = signed_path
    assert (after["booted"], after["primary"]) == (row["booted"], row["primary"])
    assert after["slots"][row["booted"]]["state"] == "good"
    other_slot = [s for s in after["slots"] if s != row["booted"]][0]
    assert after["slots"][other_slot]["state"] == "bad"  # never left bootable
    assert len(c.csms.boots) == boots


def test_statuses_survive_a_csms_outage_and_the_reboot_in_order(station201):
    # A04.FR.02 / L01.FR.01: the CSMS goes away right after accepting the update and comes
    # back only when the new firmware is on trial; every status still arrives, in order,
    # with its requestId, Installed last (it needs the accepted BootNotification).
    c = station201
    c.begin()
    rig = c.rig
    assert c.update(42, c.release()) == "Accepted"
    version = "1.%d.0" % c.versions
    rig.csms.stop()
    try:
        rig.backend.wait_status(rig.device_id, lambda s: s.get("status") == "TrialRunning"
                                and s.get("job_id", "").startswith("ocpp-42-"), 60)  # fmt: skip
    finally:
        rig.csms.start()
    installed_after_reboot(c, 42, version, delivered_before_reboot=False)
    # At least once: a status the CSMS recorded as it went away, whose answer never reached
    # the stack, is sent again after the reconnect (a CSMS drops such repeats, as libocpp
    # does). Never lost, never out of order.
    seen = [s for i, s in enumerate(c.statuses(42)) if i == 0 or c.statuses(42)[i - 1] != s]
    assert seen == ["Downloading", "Downloaded", "SignatureVerified", "Installing",
                    "InstallRebooting", "Installed"], c.statuses(42)  # fmt: skip
    c.settled(42, "Committed")


def test_new_request_while_installing_is_accepted_canceled(station201):
    # L01.FR.24 (TC_L_10 covers a scheduled download): the first update is half way through
    # writing the slot when the second arrives; the writer stops, the slot is rewritten.
    c = station201
    c.begin()
    rig = c.rig
    rig.network.rate = 1024 * 1024  # a slow link: the first install takes seconds
    try:
        assert c.update(241, c.release(pad_bytes=2 * 1024 * 1024)) == "Accepted"
        c.wait_status(241, "Installing")
        assert c.update(242, c.release()) == "AcceptedCanceled"
    finally:
        rig.network.rate = 0
    installed_after_reboot(c, 242, "1.%d.0" % c.versions)
    assert c.statuses(241)[-1] == "Installing"  # nothing more for the cancelled request
    row = c.settled(242, "Committed")
    assert row["slots"][row["booted"]]["version"] == "1.%d.0" % c.versions
