"""The engine's statuses as OCPP sees them (agent/frontends/ocpp/statuses.py): pure mapping."""

import pytest

from agent.frontends.ocpp.statuses import translate, trigger_answer

NOW = 1_800_000_000
PLAIN = {"retrieve_at": NOW - 7200, "install_at": NOW - 7200}


def names(status, info=None, request=PLAIN):
    return [m[1] for m in translate(status, info or {}, request, NOW)]


def test_engine_installed_is_never_ocpp_installed():
    # The slot is written, not yet active (L02.FR.20, ev-server #2305).
    assert names("Installed") == []
    assert names("Committed") == ["Installed", "FirmwareUpdated"]


def test_rollback_by_trial_or_bootloader_is_installation_failed():
    assert names("RolledBack", {"reason": "trial failed"}) == ["InstallationFailed"]
    assert names("RolledBack", {"reason": "new slot never came up"}) == ["InstallationFailed"]


@pytest.mark.parametrize(
    "status, request_, reason, expected",
    [
        ("DownloadScheduled", PLAIN, None, []),
        ("DownloadScheduled", {"retrieve_at": NOW + 60}, None, ["DownloadScheduled"]),
        ("DownloadScheduled", PLAIN, "charging session active", ["DownloadScheduled"]),
        ("InstallScheduled", PLAIN, None, []),
        ("InstallScheduled", {"install_at": NOW + 60}, None, ["InstallScheduled"]),
        ("InstallScheduled", PLAIN, "charging session active", ["InstallScheduled"]),
        ("Installed", PLAIN, "charging session active", ["InstallRebooting"]),
    ],
)
def test_scheduled_only_when_the_time_is_ahead_or_a_session_holds_it(
    status, request_, reason, expected
):
    assert names(status, {"reason": reason} if reason else {}, request_) == expected


def test_invalid_signature_carries_the_security_event():
    assert names("InvalidSignature", {"reason": "bad-signature"}) == [
        "InvalidSignature", "InvalidFirmwareSignature"]  # fmt: skip
    assert names("InvalidSignature", {"reason": "revoked-certificate"}) == [
        "InvalidSignature", "InvalidFirmwareSigningCertificate"]  # fmt: skip


@pytest.mark.parametrize("reason", ["malformed", "downgrade", "wrong-model", "expired"])
def test_firmware_refused_by_its_manifest_is_install_verification_failed(reason):
    # L01.FR.29: the detached signature verified, the bundle's own checks refused it. No
    # InvalidFirmwareSignature event: the signature was right.
    assert names("InvalidSignature", {"reason": reason}) == [
        "SignatureVerified", "InstallVerificationFailed"]  # fmt: skip
    assert names("InvalidSignature", {"reason": "unknown-key"})[0] == "InvalidSignature"


def test_agent_only_states_have_no_ocpp_status():
    for status in ("TrialRunning", "DownloadPaused", "Idle"):
        assert names(status, {"reason": "cancelled"}) == []
    assert names("Committed", {"reason": "regression"}) == []


def test_trigger_answers_idle_after_installed_or_nothing():
    assert trigger_answer(None) == {"status": "Idle", "request_id": None}
    assert trigger_answer({"status": "Installed", "request_id": 4})["status"] == "Idle"
    assert trigger_answer({"status": "Downloading", "request_id": 4}) == {
        "status": "Downloading", "request_id": 4}  # fmt: skip
