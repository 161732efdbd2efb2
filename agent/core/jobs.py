"""Update jobs as they arrive over MQTT: bounded, validated, and never acted on twice.

`parse_job` turns raw message bytes into a `Job` or raises MalformedJob / WrongModel with the
field at fault; it never lets another exception escape, whatever the bytes. `JobMemory`
remembers a bounded list of recent job ids so a replayed or redelivered job is ignored.
`job_from_request` builds a job for a local front-end (EVerest, the local socket API): the
same fields plus the engine options only a front-end may set (EXTENDED); the MQTT wire never
reaches them.

Runs on MicroPython: json only, times parsed here (no datetime), no reliance on dict order.
"""

import json

from agent.core.errors import MalformedJob, WrongModel
from agent.core.text import is_digits
from agent.core.timefmt import days_from_civil

ID_KEYS = ("id", "job_id", "requestId")
DEFAULT_LIMITS = {
    "max_job_bytes": 8192,
    "max_retries": 20,
    "max_jitter_s": 7 * 86400,
    "max_trial_window_s": 86400,
    "max_text": 2048,
}


class Job:
    """One validated job. Times are epoch seconds (UTC) or None; window is minutes of the
    local day as (start, end), end < start meaning the window crosses midnight."""

    def __init__(self, job_id, url, version, **kw):
        self.id = job_id
        self.url = url
        self.version = version
        self.not_before = kw.get("not_before")
        self.install_at = kw.get("install_at")
        self.deadline = kw.get("deadline")
        self.window = kw.get("window")
        self.jitter_s = kw.get("jitter_s", 0)
        self.retries = kw.get("retries", 3)
        self.checks = kw.get("checks")
        self.trial_window_s = kw.get("trial_window_s")
        self.models = kw.get("models")
        for name in EXTENDED:
            setattr(self, name, kw.get(name, EXTENDED[name]))

    def to_dict(self):
        d = {"id": self.id, "url": self.url, "version": self.version}
        for name in ("not_before", "install_at", "deadline", "jitter_s", "retries"):
            d[name] = getattr(self, name)
        d["checks"] = self.checks
        d["trial_window_s"] = self.trial_window_s
        d["models"] = self.models
        if self.window is not None:
            d["window"] = {"start": _hhmm(self.window[0]), "end": _hhmm(self.window[1])}
        for name in EXTENDED:
            if getattr(self, name) != EXTENDED[name]:  # MQTT jobs' records stay as they were
                d[name] = getattr(self, name)
        return d

    def __eq__(self, other):
        return isinstance(other, Job) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return "Job(%r, %r)" % (self.id, self.version)


# Engine options a local front-end sets on a job (never read from the MQTT wire), with their
# defaults. signature/signing_certificate: a detached signature (base64) over the whole file
# at `url`, and the PEM certificate whose key made it (checked against the firmware-signing
# roots). retry_interval_s: fixed spacing of retries instead of the backoff. hold_until_allowed:
# install and reboot wait for `Journey.allow` (EVerest's allow_firmware_installation).
# block_new_sessions: connectors refuse new sessions from the install phase to the end.
# download_waits_for_sessions: no download while a car charges. write_during_sessions: the
# inactive slot may be written while a car charges; only the reboot waits.
EXTENDED = {
    "signature": None,
    "signing_certificate": None,
    "retry_interval_s": None,
    "hold_until_allowed": False,
    "block_new_sessions": False,
    "download_waits_for_sessions": False,
    "write_during_sessions": False,
}
MAX_SIGNATURE = 2048  # base64; OCPP allows 800, an RSA-4096 signature takes 684
MAX_CERTIFICATE = 8192  # PEM; OCPP allows 5500


def job_from_dict(d):
    """Rebuild a Job from `Job.to_dict()` (the journal), re-validating every field."""
    return _build(d, None, DEFAULT_LIMITS, True)


def job_from_request(doc, device, limits=None, checks=None):
    """A Job from a local front-end's request dict: MalformedJob / WrongModel as parse_job
    (`checks` as there), and the EXTENDED engine options are read too."""
    if not isinstance(doc, dict):
        raise MalformedJob("job request must be an object")
    return _build(doc, device, _limits(limits), True, checks)


def parse_job(raw, device, limits=None, checks=None):
    """A Job from the message bytes `raw`, for `device` ({"model": ...}).

    MalformedJob for anything oversized, not JSON, or with a bad field; WrongModel when the
    job names models and the device's is not among them. `checks`: the trial check names a
    job may add (configured or registered on this charger); any other name is MalformedJob."""
    limits = _limits(limits)
    if not isinstance(raw, (bytes, bytearray)):
        raise MalformedJob("job message must be bytes")
    if len(raw) > limits["max_job_bytes"]:
        raise MalformedJob(
            "job message is %d bytes, limit is %d" % (len(raw), limits["max_job_bytes"])
        )
    # The raise sits outside the except clause: MicroPython has no exception chaining.
    doc = _decode(raw)
    if doc is _UNDECODABLE:
        raise MalformedJob("job message is not UTF-8 JSON")
    if not isinstance(doc, dict):
        raise MalformedJob("job message must be a JSON object")
    return _build(doc, device, limits, False, checks)


def job_id_of(doc):
    """The id a job message carries under any of its documented keys, or None: a refusal
    still names the job it refuses."""
    if not isinstance(doc, dict):
        return None
    for name in ID_KEYS:
        value = doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and name == "requestId":
            return str(value)
        if isinstance(value, str) and 0 < len(value) <= DEFAULT_LIMITS["max_text"]:
            return value
    return None


_UNDECODABLE = object()


def _decode(raw):
    try:
        return json.loads(bytes(raw).decode("utf-8"))
    # RuntimeError: deep nesting exhausts the parser's recursion (RecursionError on CPython,
    # RuntimeError on MicroPython); a job message has no business being nested that deep.
    except (UnicodeError, ValueError, RuntimeError, MemoryError):
        return _UNDECODABLE


def _limits(limits):
    merged = {}
    for k in DEFAULT_LIMITS:
        merged[k] = DEFAULT_LIMITS[k]
    if limits:
        for k in limits:
            merged[k] = limits[k]
    return merged


def _build(doc, device, limits, extended=False, checks=None):
    job_id = _text(doc, ID_KEYS, limits, required=True)
    url = _text(doc, ("url", "location"), limits, required=True)
    if not (url.startswith("http://") or url.startswith("https://") or url.startswith("file:")):
        raise MalformedJob("field 'url' must be an http(s):// or file: URL")
    models = _models(doc, limits)
    if device is not None and models is not None and device.get("model") not in models:
        raise WrongModel(
            "job %s is for model %s, this charger is %s"
            % (job_id, ", ".join(models), device.get("model"))
        )
    kw = {
        "not_before": _time(doc, ("not_before", "retrieve_at", "retrieveDateTime")),
        "install_at": _time(doc, ("install_at", "installDateTime")),
        "deadline": _time(doc, ("deadline", "expires")),
        "window": _window(doc.get("window")),
        "jitter_s": _int(doc, "jitter_s", 0, 0, limits["max_jitter_s"]),
        "retries": _int(doc, "retries", 3, 0, limits["max_retries"]),
        "trial_window_s": _int(doc, "trial_window_s", None, 1, limits["max_trial_window_s"]),
        "checks": _checks(doc.get("checks"), checks),
        "models": models,
    }
    if extended:
        kw.update(_extended(doc))
    # A front-end's job may name no version (OCPP has none): any signed version is accepted
    # and the manifest's is the one reported.
    version = _text(doc, ("version",), limits, required=not extended)
    return Job(job_id, url, version, **kw)


def _extended(doc):
    kw = {}
    for name, bound in (("signature", MAX_SIGNATURE), ("signing_certificate", MAX_CERTIFICATE)):
        value = doc.get(name)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= bound):
            raise MalformedJob("field '%s' must be a string of 1 to %d characters" % (name, bound))
        kw[name] = value
    if (kw["signature"] is None) != (kw["signing_certificate"] is None):
        raise MalformedJob("fields 'signature' and 'signing_certificate' come together")
    kw["retry_interval_s"] = _int(doc, "retry_interval_s", None, 0, 86400)
    for name in ("hold_until_allowed", "block_new_sessions", "download_waits_for_sessions",
                 "write_during_sessions"):  # fmt: skip
        value = doc.get(name, False)
        if not isinstance(value, bool):
            raise MalformedJob("field '%s' must be true or false" % name)
        kw[name] = value
    return kw


def _first(doc, names):
    for name in names:
        if name in doc and doc[name] is not None:
            return name, doc[name]
    return names[0], None


def _text(doc, names, limits, required=False):
    name, value = _first(doc, names)
    if value is None:
        if required:
            raise MalformedJob("field '%s' is missing" % name)
        return None
    if isinstance(value, int) and not isinstance(value, bool) and name == "requestId":
        value = str(value)  # OCPP request ids are integers
    if not isinstance(value, str) or not value:
        raise MalformedJob("field '%s' must be a non-empty string" % name)
    if len(value) > limits["max_text"]:
        raise MalformedJob("field '%s' is longer than %d characters" % (name, limits["max_text"]))
    return value


def _int(doc, name, default, low, high):
    value = doc.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MalformedJob("field '%s' must be an integer from %d to %d" % (name, low, high))
    return value


def _models(doc, limits):
    value = doc.get("models")
    if value is None and doc.get("model") is not None:
        value = [doc.get("model")]
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise MalformedJob("field 'models' must be a non-empty list of strings")
    for m in value:
        if not isinstance(m, str) or not m or len(m) > limits["max_text"]:
            raise MalformedJob("field 'models' must be a non-empty list of strings")
    return value


def _checks(value, allowed):
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 32:
        raise MalformedJob("field 'checks' must be a list of at most 32 check names")
    for name in value:
        if not isinstance(name, str) or not name or len(name) > 64:
            raise MalformedJob("field 'checks' must hold check names (1-64 characters)")
        # A job adds checks the charger already has; it never names code to import.
        if allowed is not None and name not in allowed:
            raise MalformedJob(
                "field 'checks' names %r, which is neither configured nor registered on this "
                "charger" % name,
                "a job may add only the checks listed in [trial] checks or registered",
            )
    return value


def _time(doc, names):
    name, value = _first(doc, names)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise MalformedJob("field '%s' must not be negative" % name)
        return value
    if isinstance(value, str):
        epoch = rfc3339_to_epoch(value)
        if epoch is None:
            raise MalformedJob("field '%s' is not an RFC 3339 time: %r" % (name, value[:40]))
        return epoch
    raise MalformedJob("field '%s' must be epoch seconds or an RFC 3339 time" % name)


def _window(value):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedJob('field \'window\' must be {"start": "HH:MM", "end": "HH:MM"}')
    start = _parse_hhmm(value.get("start"))
    end = _parse_hhmm(value.get("end"))
    if start is None or end is None:
        raise MalformedJob("field 'window' needs start and end as HH:MM local time")
    if start == end:
        raise MalformedJob("field 'window' is empty: start equals end")
    return (start, end)


def _parse_hhmm(text):
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        return None
    hh, mm = text[:2], text[3:]
    if not (is_digits(hh) and is_digits(mm)):
        return None
    h, m = int(hh), int(mm)
    if h > 23 or m > 59:
        return None
    return h * 60 + m


def _hhmm(minutes):
    return "%02d:%02d" % (minutes // 60, minutes % 60)


def rfc3339_to_epoch(text):
    """Epoch seconds for 'YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)', or None.

    Laxer than timefmt.parse (manifests): OCPP servers send fractions and offsets."""
    if len(text) < 20 or len(text) > 40 or text[4] != "-" or text[7] != "-":
        return None
    if text[10] not in "Tt " or text[13] != ":" or text[16] != ":":
        return None
    parts = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16], text[17:19])
    for p in parts:
        if not is_digits(p):
            return None
    y, mo, d, h, mi, s = [int(p) for p in parts]
    rest = text[19:]
    if rest.startswith("."):
        i = 1
        while i < len(rest) and is_digits(rest[i]):
            i += 1
        if i == 1:
            return None
        rest = rest[i:]
    if rest in ("Z", "z"):
        offset = 0
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
        if not (is_digits(rest[1:3]) and is_digits(rest[4:6])):
            return None
        offset = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
        offset = offset if rest[0] == "+" else -offset
    else:
        return None
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and s <= 60):
        return None
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset


class JobMemory:
    """Recently seen job ids, oldest first, at most `limit` of them (the journal keeps it)."""

    def __init__(self, ids=None, limit=64):
        self.limit = limit
        self.ids = []
        for job_id in ids or ():
            self.remember(job_id)

    def seen(self, job_id):
        return job_id in self.ids

    def remember(self, job_id):
        if job_id in self.ids:
            return
        self.ids.append(job_id)
        # Drop the oldest: a job replayed after `limit` newer jobs is still stopped by the
        # manifest's anti-rollback check, so the memory need not grow without bound.
        while len(self.ids) > self.limit:
            self.ids.pop(0)

    def to_list(self):
        return list(self.ids)

    @classmethod
    def from_list(cls, ids, limit=64):
        if not isinstance(ids, list):
            raise MalformedJob("job memory must be a list of ids")
        return cls([i for i in ids if isinstance(i, str)], limit)
