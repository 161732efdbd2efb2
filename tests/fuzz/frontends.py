"""Fuzz targets for what the front-ends next to MQTT parse (issue 11, issue 13's inputs):
the local API's request line, an OCPP UpdateFirmware request as a stack hands it to the
local API, EVerest's e2m request, and the MQTT message a job arrives in.

Each runs the front-end's real code down to the engine's door: the request becomes a job
exactly as `Daemon.take_request` builds it (`job_from_request` with the charger's check
names), then is declined so nothing piles up. The daemon's loop itself is not run (it
would turn every input into a journal write); `_Engine` stands in for it and says so.
"""

import atexit
import json
import os
import shutil
import tempfile

from agent.config import Config
from agent.core.errors import MalformedJob, UpdateError, WrongModel
from agent.core.jobs import job_from_dict, job_from_request, parse_job
from agent.frontends import channel as ch
from agent.frontends.everest import EverestSystem, decode_request
from agent.frontends.local_api import LocalApi
from agent.frontends.ocpp.service import FirmwareService

HERE = os.path.dirname(os.path.abspath(__file__))
# A manufacturer root (valid to 2099) whose signer's certificate the corpus seeds carry;
# written by `python -m tests.fuzz.seeds` with the signer's key next to nothing: the
# fuzzing needs the certificate to pass, never a signature.
MANUFACTURER_ROOT = os.path.join(HERE, "manufacturer-root.pem")
DEVICE = {"model": "ACME-AC22"}
JOB_CHECKS = ["alarms", "charging-session", "communication", "acme.checks:Contactor"]
# UpdateFirmwareStatusEnumType: every answer a stack may pass on to the CSMS.
STATUSES = ("Accepted", "AcceptedCanceled", "Rejected", "InvalidCertificate",
            "RevokedCertificate")  # fmt: skip


class _Engine:
    """Daemon.submit without the daemon's loop (see the module docstring)."""

    def submit(self, doc):
        try:
            job = job_from_request(doc, DEVICE, checks=JOB_CHECKS)
        except UpdateError as e:
            return "rejected", e.message
        # What the journal stores must come back as the same job.
        assert job_from_dict(json.loads(json.dumps(job.to_dict()))) == job
        assert not job.checks or set(job.checks) <= set(JOB_CHECKS)
        return "rejected", "fuzzing: not taken"

    def allow_installation(self):
        pass


class _QuickService(FirmwareService):
    """A long poll (`events`, wait_s up to 30 s) answers at once: fuzzing must not wait."""

    def events(self, wait_s):
        return FirmwareService.events(self, 0)


class _NoChannel:
    """EverestSystem's MQTT channel, never started: the target calls its handlers itself."""


_built = {}


def _config():
    if "cfg" not in _built:
        state = tempfile.mkdtemp(prefix="fuzz-frontends-")
        atexit.register(shutil.rmtree, state, True)
        raw = {
            "device": {"id": "cp-fuzz", "model": DEVICE["model"], "hardware_revision": "r"},
            "slots": {"A": {"rootfs": "a"}, "B": {"rootfs": "b"}},
            "bootloader": {"backend": "simulated"},
            "state": {"dir": state},
            "ocpp_firmware": {"manufacturer_roots": [MANUFACTURER_ROOT]},
            "local_api": {"socket": os.path.join(state, "agent.sock")},
        }
        _built["cfg"] = Config(raw, os.path.join(state, "agent.toml"))
    return _built["cfg"]


def _local_api():
    if "local" not in _built:
        cfg = _config()
        api = LocalApi(cfg, service=_QuickService(cfg, "local"))
        api.service.start(_Engine())  # the socket is not opened: handle_line is the parser
        _built["local"] = api
    return _built["local"]


def _everest():
    if "everest" not in _built:
        system = EverestSystem(_config(), channel=_NoChannel())
        system.service.start(_Engine())
        _built["everest"] = system
    return _built["everest"]


def _answered(reply):
    """The local API's reply contract: an object with a boolean `ok`, JSON on the socket,
    and never the answer to a bug ("internal error")."""
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    json.dumps(reply)
    assert not str(reply.get("error", "")).startswith("internal error"), reply
    return reply


def local_api_line(data):
    """One request line of any op, as the socket hands it to the API."""
    _answered(_local_api().handle_line(bytes(data)))


def ocpp_update_firmware(data):
    """An OCPP 2.0.1 UpdateFirmware payload, passed through by a stack as docs/ocpp.md's
    sample integration does (field by field, no schema check: the agent must not rely on
    the stack's), then the local API's answer."""
    try:
        req = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, RecursionError):
        return  # the stack's OCPP-J layer hands over JSON only
    if not isinstance(req, dict):
        return
    fw = req.get("firmware") if isinstance(req.get("firmware"), dict) else {}
    line = {"op": "update_firmware", "request_id": req.get("requestId"),
            "location": fw.get("location"), "retrieve_at": fw.get("retrieveDateTime"),
            "install_at": fw.get("installDateTime"),
            "signing_certificate": fw.get("signingCertificate"),
            "signature": fw.get("signature"), "retries": req.get("retries"),
            "retry_interval_s": req.get("retryInterval"),
            "allow_new_sessions": req.get("allowNewSessions", False)}  # fmt: skip
    reply = _answered(_local_api().handle_line(json.dumps(line).encode()))
    assert not reply["ok"] or reply["status"] in STATUSES, reply


def everest_request(data):
    """An e2m/update_firmware message from EVerest's system_API."""
    try:
        payload, reply_to = decode_request(data)
    except ValueError:
        return  # logged and not answered: EVerest times the request out
    assert reply_to is None or (isinstance(reply_to, str) and reply_to), reply_to
    assert _everest().update_firmware(payload) in STATUSES


def mqtt_job_message(data):
    """The bytes of an MQTT job message: the channel's decoding, then the job parser."""
    payload = ch.decode_payload(bytes(data), ch.DEFAULTS["max_message_bytes"])
    parse_job(json.dumps(payload).encode(), DEVICE, checks=JOB_CHECKS)


ALLOWED = {
    "local-api": (),
    "ocpp-update-firmware": (),
    "everest-request": (),
    "mqtt-job-message": (ch.MessageError, MalformedJob, WrongModel),
}
