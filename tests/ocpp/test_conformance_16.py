"""OCPP 1.6J with the security whitepaper (edition 3) on the virtual board: the cases where
the protocol differs from 2.0.1 (SignedUpdateFirmware with its installDateTime, retries and
retryInterval, SignedFirmwareStatusNotification, no boot reason, ExtendedTriggerMessage, a
classic UpdateFirmware refused, the 1.6 certificate messages). The engine decisions behind
the other cases are the same for both protocols and are proven on 2.0.1
(test_conformance_201.py) and against the engine (tests/core)."""

import os
import time

import pytest
from ocpp.exceptions import NotSupportedError
from ocpp.v16 import call

from agent.trust.manufacturer import hash_data
from tests.ocpp.conftest import FINAL, in_order, iso

pytestmark = pytest.mark.timeout(180)


def test_TC_L_01_signed_update_firmware_installation_successful(station16):
    c = station16
    c.begin()
    assert c.update(1, c.release()) == "Accepted"
    version = "1.%d.0" % c.versions
    installed = c.wait_status(1, FINAL)
    assert installed["status"] == "Installed", c.statuses()
    c.wait_event("FirmwareUpdated")
    seen = c.statuses(1)
    assert in_order(seen, ["Downloading", "Downloaded", "SignatureVerified", "Installing",
                           "InstallRebooting", "Installed"]), seen  # fmt: skip
    # 1.6 has no boot reason: Installed comes from the new firmware after its accepted boot.
    boot = [b for b in c.boots() if b["station"]["firmware_version"] == version][0]
    assert c.pos(boot) < c.pos(installed)
    c.settled(1, "Committed")


def test_TC_L_02_signed_update_firmware_install_scheduled(station16):
    # firmware.installDateTime of SignedUpdateFirmware reaches the agent: not before it.
    c = station16
    c.begin()
    install_at = time.time() + 3
    assert c.update(2, c.release(), install=iso(3)) == "Accepted"
    c.wait_status(2, "InstallScheduled")
    c.wait_status(2, "Installing")
    assert time.time() >= install_at - 1  # whole seconds
    assert c.wait_status(2, FINAL)["status"] == "Installed", c.statuses()
    assert in_order(c.statuses(2), ["SignatureVerified", "InstallScheduled", "Installing",
                                    "InstallRebooting", "Installed"])  # fmt: skip
    c.settled(2, "Committed")


def test_TC_L_05_signed_update_firmware_invalid_certificate(station16):
    c = station16
    c.begin()
    fw = dict(c.release(), signing_certificate=c.rig.mfr.expired_signing_certificate())
    assert c.update(5, fw) == "InvalidCertificate"
    c.wait_event("InvalidFirmwareSigningCertificate", 10)
    assert c.statuses(5) == []


def test_TC_L_06_invalid_signature_even_when_the_csms_refuses_security_events(station16):
    # An old CSMS answers SecurityEventNotification with CALLERROR NotImplemented: logged,
    # never fatal; the statuses after it still go out in order.
    c = station16
    c.begin()
    c.csms.refuse.add("SecurityEventNotification")
    try:
        assert c.update(6, c.release(bad_signature=True)) == "Accepted"
        assert c.wait_status(6, FINAL)["status"] == "InvalidSignature"
        c.wait_event("InvalidFirmwareSignature", 10)
        assert c.statuses(6) == ["Downloading", "Downloaded", "InvalidSignature"]
        c.settled(6, "InvalidSignature")
    finally:
        c.csms.refuse.discard("SecurityEventNotification")


def test_TC_L_07_signed_update_firmware_download_failed_after_retries(station16):
    # SignedUpdateFirmware's retries and retryInterval reach the agent: retries + 1
    # attempts, retryInterval apart, DownloadFailed only after the last (2.0.1 L01.FR.30).
    c = station16
    c.begin()
    fw = c.release()
    fw["location"] += "_does_not_exist"
    path = "/" + fw["location"].rsplit("/", 1)[1]
    assert c.update(7, fw, retries=2, interval=1) == "Accepted"
    assert c.wait_status(7, FINAL)["status"] == "DownloadFailed"
    tries = [r["at"] for r in c.rig.images.requests if r["path"] == path]
    assert len(tries) == 3 and all(b - a >= 0.9 for a, b in zip(tries, tries[1:])), tries
    assert c.statuses(7) == ["Downloading", "DownloadFailed"]
    c.settled(7, "DownloadFailed")


def test_classic_update_firmware_is_not_supported_on_a_security_station(station16):
    # 1.6 security whitepaper L01.FR.20: CALLERROR NotSupported, and no update starts.
    c = station16
    c.begin()
    fw = c.release()
    with pytest.raises(NotSupportedError):
        classic = call.UpdateFirmware(location=fw["location"], retrieve_date="2026-01-01T00:00:00Z")
        c.csms.call(c.station, classic)
    assert c.statuses() == []


def test_extended_trigger_message_answers_the_last_status_or_idle(station16):
    # WP16 L01.FR.28/29: Idle after Installed (the last case here ended InvalidSignature or
    # Installed), else the last status with its requestId.
    c = station16
    c.begin()
    reply = c.csms.call(c.station, call.ExtendedTriggerMessage(
        requested_message="FirmwareStatusNotification"))  # fmt: skip
    assert str(reply.status) == "Accepted"
    triggered = c.csms.wait_for("firmware", lambda e: c.pos(e) >= c.mark, 10)
    last = [e for e in c.csms.firmware if c.pos(e) < c.mark][-1]
    if last["status"] == "Installed":
        assert triggered["status"] == "Idle" and triggered["request_id"] is None
    else:
        assert (triggered["status"], triggered["request_id"]) == (last["status"],
                                                                  last["request_id"])  # fmt: skip


def test_manufacturer_root_rotation_with_16_certificate_messages(station16):
    c = station16
    from hil.release import ManufacturerPki

    workdir = os.path.join(c.rig.dir, "rotation")
    os.makedirs(workdir, exist_ok=True)
    new = ManufacturerPki(workdir)
    get = call.GetInstalledCertificateIds(certificate_type="ManufacturerRootCertificate")
    before = c.csms.call(c.station, get).certificate_hash_data
    reply = c.csms.call(c.station, call.InstallCertificate(
        certificate_type="ManufacturerRootCertificate", certificate=new.pem(new.root)))  # fmt: skip
    assert str(reply.status) == "Accepted"
    after = c.csms.call(c.station, get).certificate_hash_data
    assert len(after) == len(before) + 1
    ids = hash_data(new.root)
    assert any(int(h["serial_number"], 16) == int(ids["serial_number"], 16) for h in after)
    reply = c.csms.call(c.station, call.DeleteCertificate(certificate_hash_data=ids))
    assert str(reply.status) == "Accepted"
    assert len(c.csms.call(c.station, get).certificate_hash_data) == len(before)
