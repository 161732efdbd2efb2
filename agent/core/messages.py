"""The MQTT contract of docs/mqtt-api.md as code: topic names, payload construction and parsing.

Invariant: the agent (frontends, reporting) and the operator side (fleet/) build and read every
message through this one module, so the two cannot drift. Builders return plain dicts that
the agent itself would accept; parsers take foreign, untrusted dicts and return a normalised
dict or raise MessageInvalid naming the field, never anything else.

Runs on MicroPython: json only, %-formatting, no reliance on dict order.
"""

import json

from agent.core import jobs, resets

# --- topics: suffixes below {prefix}/{device_id}/ ----------------------------------------------
JOB = "update/job"
CANCEL = "update/cancel"
STATUS = "update/status"
INVENTORY = "update/inventory"
HEALTH = "update/health"
ONLINE = "update/online"
PING = "backend/ping"
PONG = "backend/pong"
SUFFIXES = (JOB, CANCEL, STATUS, INVENTORY, HEALTH, ONLINE, PING, PONG)
RETAINED = (INVENTORY, ONLINE)
DEFAULT_PREFIX = "chargers"
MAX_INT = 1 << 63  # numbers in messages stay below: the fleet keeps them in BIGINT columns


def topic(prefix, device_id, suffix):
    return "%s/%s/%s" % (prefix, device_id, suffix)


def device_filter(prefix, suffix):
    """The backend's wildcard filter for one suffix of every device."""
    return "%s/+/%s" % (prefix, suffix)


def split_topic(prefix, topic_name):
    """'{prefix}/{device}/{suffix}' -> (device, suffix), or (None, None) for other topics."""
    head = prefix + "/"
    if not topic_name.startswith(head):
        return None, None
    rest = topic_name[len(head) :]
    cut = rest.find("/")
    if cut <= 0:
        return None, None
    suffix = rest[cut + 1 :]
    if suffix not in SUFFIXES:
        return None, None
    return rest[:cut], suffix


def encode(payload):
    """Compact JSON with sorted keys, as the agent publishes it (MicroPython's json has
    neither option: it writes keys in its own order, which a reader must not rely on)."""
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    except TypeError:
        text = json.dumps(payload)
    return text.encode("utf-8")


class MessageInvalid(Exception):
    """A payload that breaks the contract; `field` names what was wrong."""

    def __init__(self, field, what):
        super().__init__("field %s %s" % (field, what))  # MicroPython: no Exception.__init__
        self.field = field


# --- statuses ------------------------------------------------------------------------------
IDLE = "Idle"
DOWNLOAD_SCHEDULED = "DownloadScheduled"
DOWNLOADING = "Downloading"
DOWNLOADED = "Downloaded"
DOWNLOAD_PAUSED = "DownloadPaused"
DOWNLOAD_FAILED = "DownloadFailed"
SIGNATURE_VERIFIED = "SignatureVerified"
INVALID_SIGNATURE = "InvalidSignature"
INSTALL_SCHEDULED = "InstallScheduled"
INSTALLING = "Installing"
INSTALL_REBOOTING = "InstallRebooting"
INSTALLED = "Installed"
INSTALLATION_FAILED = "InstallationFailed"
INSTALL_VERIFICATION_FAILED = "InstallVerificationFailed"
TRIAL_RUNNING = "TrialRunning"
COMMITTED = "Committed"
ROLLED_BACK = "RolledBack"
STATUS_NAMES = (IDLE, DOWNLOAD_SCHEDULED, DOWNLOADING, DOWNLOADED, DOWNLOAD_PAUSED,
                DOWNLOAD_FAILED, SIGNATURE_VERIFIED, INVALID_SIGNATURE, INSTALL_SCHEDULED,
                INSTALLING, INSTALL_REBOOTING, INSTALLED, INSTALLATION_FAILED,
                INSTALL_VERIFICATION_FAILED, TRIAL_RUNNING, COMMITTED, ROLLED_BACK)  # fmt: skip
# A journey ending in one of these failed (RolledBack: see rollback_counts below).
FAILURE_STATUSES = (DOWNLOAD_FAILED, INVALID_SIGNATURE, INSTALLATION_FAILED,
                    INSTALL_VERIFICATION_FAILED, ROLLED_BACK)  # fmt: skip

# Phases an operator times separately; each status moves a job into one of them.
PHASE_DOWNLOAD = "download"
PHASE_INSTALL = "install"
PHASE_REBOOT = "reboot"
PHASE_TRIAL = "trial"
PHASE_DONE = "done"
_PHASE = (
    (DOWNLOAD_SCHEDULED, PHASE_DOWNLOAD), (DOWNLOADING, PHASE_DOWNLOAD),
    (DOWNLOAD_PAUSED, PHASE_DOWNLOAD), (DOWNLOADED, PHASE_DOWNLOAD),
    (SIGNATURE_VERIFIED, PHASE_INSTALL), (INSTALL_SCHEDULED, PHASE_INSTALL),
    (INSTALLING, PHASE_INSTALL), (INSTALLED, PHASE_INSTALL),
    (INSTALL_REBOOTING, PHASE_REBOOT), (TRIAL_RUNNING, PHASE_TRIAL),
)  # fmt: skip
# Until one of these arrives the agent still honours a cancel.
INSTALL_STARTED = (INSTALLING, INSTALLED, INSTALL_REBOOTING, TRIAL_RUNNING, COMMITTED,
                   ROLLED_BACK, INSTALL_VERIFICATION_FAILED)  # fmt: skip

# Reasons on Idle statuses.
REASON_CANCELLED = "cancelled"
REASON_REJECTED = "rejected"
REASON_MALFORMED_JOB = "malformed-job"
REASON_WRONG_MODEL = "wrong-model"
REASON_SESSION = "charging session active"

# Why a RolledBack happened: the agent's `cause` (agent/core/resets.py, docs/mqtt-api.md
# "rollback causes"). Whom a rollback blames is decided here and nowhere else: a failed check,
# a regression and a crash are the release's fault; power cuts that used up the boot attempts
# are the site's; resets the board cannot explain are unclear (they count once several
# chargers of a cohort report them).
CAUSE_CHECK_FAILED = resets.CHECK_FAILED
CAUSE_REGRESSION = resets.REGRESSION
CAUSE_CRASH = resets.CRASH
CAUSE_POWER_LOSS = resets.POWER_LOSS
CAUSE_UNEXPLAINED = resets.UNEXPLAINED
BLAME_RELEASE = "release"
BLAME_SITE = "site"
BLAME_UNCLEAR = "unclear"
_BLAME = ((CAUSE_CHECK_FAILED, BLAME_RELEASE), (CAUSE_REGRESSION, BLAME_RELEASE),
          (CAUSE_CRASH, BLAME_RELEASE), (CAUSE_POWER_LOSS, BLAME_SITE),
          (CAUSE_UNEXPLAINED, BLAME_UNCLEAR))  # fmt: skip

# Rollback reasons (docs/mqtt-api.md, status); an agent from before `cause` is judged by these.
REASON_TRIAL_FAILED = "trial failed"
REASON_REGRESSION = "regression"
REASON_NEVER_CAME_UP = resets.NEVER_CAME_UP
REASON_FELL_BACK = resets.FELL_BACK_IN_TRIAL
REASON_POWER_LOSS = resets.USED_UP_BY_POWER_LOSS
REASON_UNEXPLAINED = resets.USED_UP_BY_RESETS


def rollback_blame(cause, reason=None):
    """BLAME_RELEASE, BLAME_SITE or BLAME_UNCLEAR for a RolledBack with this cause (or, from
    an agent that sends none, this reason). Unknown causes blame the release: an operator would
    rather halt on a surprise than roll it further."""
    if isinstance(cause, str):
        for name, blame in _BLAME:
            if cause == name:
                return blame
        return BLAME_RELEASE
    if reason == REASON_POWER_LOSS:
        return BLAME_SITE
    if reason == REASON_UNEXPLAINED:
        return BLAME_UNCLEAR
    return BLAME_RELEASE


def rollback_counts(reason, cause=None):
    """True when a RolledBack counts as a failure of the release on its own."""
    return rollback_blame(cause, reason) == BLAME_RELEASE


def phase_of(status):
    for name, phase in _PHASE:
        if name == status:
            return phase
    return PHASE_DONE


def is_failure(status, reason=None, cause=None):
    if status == ROLLED_BACK:
        return rollback_counts(reason, cause)
    return status in FAILURE_STATUSES


# --- builders (what is sent) ---------------------------------------------------------------


def job_message(job_id, url, version, **fields):
    """A job payload the agent accepts: fields as in docs/mqtt-api.md (models, retrieve_at,
    install_at, window {"start","end"}, jitter_s, deadline, retries, checks, trial_window_s).
    Validated with the agent's own parser; raises MessageInvalid on a field it would refuse."""
    msg = {"job_id": job_id, "url": url, "version": version}
    for key in fields:
        if fields[key] is not None:
            msg[key] = fields[key]
    try:
        jobs.parse_job(encode(msg), None)
    except jobs.MalformedJob as e:
        raise MessageInvalid("job", "would be refused by the agent: %s" % e)
    return msg


def cancel_message(job_id):
    return {"job_id": job_id}


def status_message(status, info, seq, ts):
    msg = {}
    for key in info:
        msg[key] = info[key]
    msg["status"] = status
    msg["seq"] = seq
    msg["ts"] = int(ts)
    return msg


def health_message(job_id, slot, phase, checks, verdict, ts):
    """checks: [(name, passed, evidence)]."""
    return {
        "job_id": job_id, "phase": phase, "verdict": verdict, "slot": slot, "ts": int(ts),
        "checks": [{"name": n, "passed": bool(p), "evidence": e} for n, p, e in checks],
    }  # fmt: skip


def inventory_message(device, boot, slots, last_job, rollbacks, ts, components=None, trust=None):
    """The update-matrix row. device: [device] of the config (id, model, hardware_revision,
    group, site, site_type); boot: {backend, booted, primary, slots {S: {attempts_left}}};
    slots: {S: {version, state}}; last_job and rollbacks [{id, version, result, reason,
    check, cause}] from the history; components {name: version}; trust: what the charger
    trusts (docs/mqtt-api.md, inventory). Rows without components or trust leave them out."""
    row = {
        "device_id": device["id"], "model": device["model"],
        "hardware_revision": device["hardware_revision"],
        "group": device.get("group", ""), "site": device.get("site", ""),
        "site_type": device.get("site_type", ""),
        "backend": boot["backend"], "booted": boot["booted"], "primary": boot["primary"],
        "slots": {}, "last_job": last_job, "rollbacks": rollbacks, "ts": int(ts),
    }  # fmt: skip
    for s in boot["slots"]:
        info = slots.get(s, {})
        row["slots"][s] = {
            "version": info.get("version"),
            "state": info.get("state"),
            "attempts_left": boot["slots"][s]["attempts_left"],
        }
    if components is not None:
        row["components"] = components
    if trust is not None:
        row["trust"] = trust
    return row


def online_message(device_id, online, ts=None, version=None):
    msg = {"device_id": device_id, "online": bool(online)}
    if ts is not None:
        msg["ts"] = int(ts)
    if version is not None:
        msg["version"] = version
    return msg


# --- parsers (what is received; the input is foreign) ----------------------------------------


def _str(doc, name, required=False, limit=256):
    value = doc.get(name)
    if value is None:
        if required:
            raise MessageInvalid(name, "is missing")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise MessageInvalid(name, "must be a string of at most %d characters" % limit)
    return value


def _int(doc, name, required=False):
    value = doc.get(name)
    if value is None and not required:
        return None
    # One number beyond MAX_INT would fail the fleet's whole batch of messages it came in.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_INT:
        raise MessageInvalid(name, "must be a non-negative integer below 2**63")
    return value


def parse_status(doc):
    """-> {job_id, seq, status, version, reason, check, cause, detail, progress, downloaded,
    payload_bytes, resets [reset causes], ts}; fields a status does not carry are None
    (resets: [])."""
    status = _str(doc, "status", True)
    if status not in STATUS_NAMES:
        raise MessageInvalid("status", "is not a status name: %r" % status[:40])
    out = {"status": status, "job_id": _str(doc, "job_id"), "seq": _int(doc, "seq", True)}
    for name in ("version", "reason", "check"):
        out[name] = _str(doc, name)
    out["cause"] = _str(doc, "cause", limit=40)
    detail = doc.get("detail")
    out["detail"] = detail[:512] if isinstance(detail, str) else None
    for name in ("progress", "downloaded", "payload_bytes", "ts"):
        out[name] = _int(doc, name)
    seen = doc.get("resets") or []
    if not isinstance(seen, list):
        raise MessageInvalid("resets", "must be a list of reset causes")
    out["resets"] = [r for r in seen[:64] if isinstance(r, str) and len(r) <= 40]
    return out


def parse_health(doc):
    """-> {job_id, phase, verdict, failed (names of failed checks), ts}."""
    out = {"job_id": _str(doc, "job_id", True), "phase": _str(doc, "phase", True)}
    out["verdict"] = _str(doc, "verdict", True)
    if out["verdict"] not in ("pass", "fail", "regression"):
        raise MessageInvalid("verdict", "must be pass, fail or regression")
    checks = doc.get("checks") or []
    if not isinstance(checks, list):
        raise MessageInvalid("checks", "must be a list")
    out["failed"] = [
        c.get("name") for c in checks if isinstance(c, dict) and c.get("passed") is False
    ]
    out["ts"] = _int(doc, "ts")
    return out


def _running_version(doc):
    slots = doc.get("slots")
    booted = doc.get("booted")
    if isinstance(slots, dict) and isinstance(slots.get(booted), dict):
        version = slots[booted].get("version")
        if isinstance(version, str):
            return version
    return None


def parse_inventory(doc):
    """-> {device_id, model, hardware_revision, version (of the booted slot), group, site,
    site_type, components {name: version}, last_result, last_version, rollbacks [version],
    power_loss_rollbacks [version], security_floor, ts}.

    rollbacks: versions the charger rolled back from for the release's fault or for reasons
    unclear (never offer them again); power_loss_rollbacks: versions power cuts rolled back
    (the release is not to blame: they may be offered again). components is empty unless the
    row carries a mapping; security_floor is None unless the row carries `trust`."""
    out = {"device_id": _str(doc, "device_id", True), "model": _str(doc, "model", True)}
    out["hardware_revision"] = _str(doc, "hardware_revision", True)
    for name in ("group", "site", "site_type"):
        out[name] = _str(doc, name) or ""
    out["version"] = _running_version(doc)
    components = doc.get("components")
    out["components"] = {}
    if isinstance(components, dict):
        for name in components:
            value = components[name]
            if isinstance(value, dict):
                value = value.get("version")
            if isinstance(name, str) and (value is None or isinstance(value, str)):
                out["components"][name] = value  # None: an MCU write is unfinished
    last = doc.get("last_job")
    out["last_result"] = last.get("result") if isinstance(last, dict) else None
    out["last_version"] = last.get("version") if isinstance(last, dict) else None
    out["rollbacks"], out["power_loss_rollbacks"] = [], []
    rollbacks = doc.get("rollbacks") or []
    for r in rollbacks if isinstance(rollbacks, list) else []:
        if isinstance(r, dict) and isinstance(r.get("version"), str):
            site = rollback_blame(r.get("cause"), r.get("reason")) == BLAME_SITE
            out["power_loss_rollbacks" if site else "rollbacks"].append(r["version"])
    trust = doc.get("trust")
    floor = trust.get("security_floor") if isinstance(trust, dict) else None
    out["security_floor"] = (
        floor if isinstance(floor, int) and not isinstance(floor, bool) else None
    )
    out["ts"] = _int(doc, "ts") or 0
    return out


def parse_online(doc):
    """-> {device_id, online, ts (or None), version (or None)}."""
    online = doc.get("online")
    if not isinstance(online, bool):
        raise MessageInvalid("online", "must be true or false")
    return {
        "device_id": _str(doc, "device_id", True), "online": online,
        "ts": _int(doc, "ts"), "version": _str(doc, "version"),
    }  # fmt: skip
