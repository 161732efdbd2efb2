"""The engine's statuses as OCPP sees them: FirmwareStatus values and security events.

Invariant: `Installed` (and the security event FirmwareUpdated) is sent only when the engine
reports Committed, i.e. the new slot booted, passed its trial and is committed (OCPP
L01.FR.28/31/32, L02.FR.20); the engine's own "Installed" (slot written, not yet active) never
becomes OCPP Installed. A rollback, by the trial or the bootloader, ends as
InstallationFailed for the same request. A bundle whose signed manifest refuses it after the
detached signature verified ends InstallVerificationFailed (L01.FR.29). DownloadScheduled and
InstallScheduled are sent only when the request's time is in the future or a charging session
holds the update (L01.FR.13/16/34). Pure: no I/O, no clock of its own.
"""

FIRMWARE_UPDATED = "FirmwareUpdated"
INVALID_SIGNATURE_EVENT = "InvalidFirmwareSignature"
INVALID_CERTIFICATE_EVENT = "InvalidFirmwareSigningCertificate"
SESSION_REASON = "charging session active"

# FirmwareStatusEnumType values (2.0.1; the 1.6 security whitepaper has the same set).
OCPP_STATUSES = (
    "Downloaded", "DownloadFailed", "Downloading", "DownloadScheduled", "DownloadPaused",
    "Idle", "InstallationFailed", "Installing", "Installed", "InstallRebooting",
    "InstallScheduled", "InstallVerificationFailed", "InvalidSignature", "SignatureVerified",
)  # fmt: skip
FINAL = ("Installed", "DownloadFailed", "InvalidSignature", "InstallVerificationFailed",
         "InstallationFailed")  # fmt: skip
SAME = ("Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting",
        "DownloadFailed", "InstallationFailed", "InstallVerificationFailed")  # fmt: skip
CERTIFICATE_REASONS = ("invalid-certificate", "revoked-certificate")
# The detached signature verified, but the bundle's own signed manifest refused the firmware
# (not one of our bundles, expired, downgrade, another model): OCPP's "verification of the
# new firmware failed" (L01.FR.29), not an invalid signature, and no security event. A bundle
# whose own signature fails (bad-signature, unknown-key) stays InvalidSignature.
MANIFEST_REASONS = ("malformed", "expired", "not-yet-valid", "downgrade", "root-rollback",
                    "wrong-model", "wrong-hardware", "payload-mismatch")  # fmt: skip


def _future(epoch, now):
    return epoch is not None and epoch > now


def translate(status, info, request, now):
    """[("status", FirmwareStatus)] and [("event", type, tech_info)] the CSMS must get for
    the engine's `status` with `info` (reason, detail, ...), in order. request: the OCPP
    request record {"retrieve_at", "install_at"} (epoch seconds or None)."""
    reason = info.get("reason")
    if status in SAME:
        return [("status", status)]
    if status == "DownloadScheduled":
        waiting = _future(request.get("retrieve_at"), now) or reason == SESSION_REASON
        return [("status", status)] if waiting else []
    if status == "InstallScheduled":
        waiting = _future(request.get("install_at"), now) or reason == SESSION_REASON
        return [("status", status)] if waiting else []
    if status == "Installed":
        # The slot is written; a session holds the reboot. 2.0.1's InstallRebooting: "finished
        # installing, requires a reboot ... done automatically when idle".
        return [("status", "InstallRebooting")] if reason == SESSION_REASON else []
    if status == "Committed":
        if reason is not None:  # a regression found while observing: nothing for OCPP
            return []
        return [("status", "Installed"), ("event", FIRMWARE_UPDATED, _tech(info, "committed"))]
    if status == "RolledBack":
        return [("status", "InstallationFailed")]
    if status == "InvalidSignature":
        if reason in MANIFEST_REASONS:
            return [("status", "SignatureVerified"), ("status", "InstallVerificationFailed")]
        event = INVALID_SIGNATURE_EVENT
        if reason in CERTIFICATE_REASONS:
            event = INVALID_CERTIFICATE_EVENT
        return [("status", status), ("event", event, _tech(info, reason))]
    # DownloadPaused (a retry: the next attempt sends Downloading again, L01.FR.30),
    # TrialRunning, and Idle (a cancelled, superseded or refused job) have no OCPP status.
    return []


def _tech(info, default):
    text = info.get("detail") or info.get("reason") or default or ""
    if info.get("version"):
        text = "version %s: %s" % (info["version"], text)
    return str(text)[:255]


def trigger_answer(last):
    """TriggerMessage(FirmwareStatusNotification): Idle without a request id when nothing
    ran or the last status was Installed, else the last status with its id (L01.FR.25/26,
    1.6 security L01.FR.28/29). last: {"status", "request_id"} or None."""
    if not last or last.get("status") in (None, "Installed", "Idle"):
        return {"status": "Idle", "request_id": None}
    return {"status": last["status"], "request_id": last.get("request_id")}
