"""The firmware engine as one OCPP stack sees it: UpdateFirmware in, statuses and security
events out, and the stack's other questions answered.

Invariants (docs/ocpp.md has each with its requirement and test):
- A request is answered only after its certificate was checked (L01.FR.21/22: Invalid or
  RevokedCertificate plus the security event InvalidFirmwareSigningCertificate, L01.FR.02),
  and "Accepted" only after the job and its OCPP record are saved.
- A secure-only station refuses a request without certificate and signature (TC_L_18).
- One job per request: a new request while the running one has not switched slots replaces it
  (AcceptedCanceled), afterwards it is Rejected (L01.FR.24/27).
- Statuses reach the stack in order through the durable outbox, never before the stack says
  its BootNotification of this boot was accepted (B01.FR.08), each with its requestId.
"""

import logging
import os
import threading
import time

from agent.core.errors import NetworkError
from agent.core.jobs import rfc3339_to_epoch
from agent.core.timefmt import format as rfc3339
from agent.frontends.ocpp.outbox import Outbox
from agent.frontends.ocpp.statuses import INVALID_CERTIFICATE_EVENT, translate, trigger_answer
from agent.trust.manufacturer import CertificateProblem, ManufacturerRoots

log = logging.getLogger("charger-update")

MANUFACTURER_ROOT = "ManufacturerRootCertificate"
DEFAULTS = {
    "secure_only": True,  # refuse requests without signing certificate and signature
    "write_during_transactions": True,  # A/B: write the inactive slot while a car charges
    "reboot_grace_s": 30.0,  # bounded wait for the stack to confirm InstallRebooting
    "retries": 3,  # when a request names none ("the station decides")
    # read by agent/trust/manufacturer.py and agent/control/steps.py:
    "manufacturer_roots": None,
    "manufacturer_crls": None,
    "rsa_pkcs1v15": False,
    "max_firmware_bytes": 4 << 30,
}


class FirmwareService:
    """name: which stack (its outbox file is STATE/ocpp-NAME.json); security_events: whether
    this stack wants our security events (EVerest's libocpp sends its own); hold: the stack
    allows the installation explicitly (EVerest's allow_firmware_installation);
    gate_on_boot: hand out nothing before the stack reports its BootNotification accepted."""

    def __init__(self, cfg, name, roots=None, clock=time.time, security_events=True,
                 hold=False, gate_on_boot=True):  # fmt: skip
        options = cfg.options("ocpp_firmware", DEFAULTS)
        self.options = options
        self.name = name
        self.clock = clock
        self.security_events = security_events
        self.hold = hold
        self.gate_on_boot = gate_on_boot
        self.reboot_grace_s = float(options["reboot_grace_s"])
        self.roots = roots or ManufacturerRoots.from_config(cfg)
        self.outbox = Outbox(os.path.join(cfg.state_dir, "ocpp-%s.json" % name))
        self.daemon = None
        self.boot = None  # the stack's BootNotification result on this boot
        self.boot_cond = threading.Condition()

    def __repr__(self):
        return "FirmwareService(%s)" % self.name

    # -- the daemon's side (agent/control/frontends.py) -------------------------------------

    def start(self, daemon):
        self.daemon = daemon

    def stop(self):
        pass

    def status(self, status, info):
        record = self.outbox.request(info.get("job_id"))
        if record is None:
            return  # not a job of this stack (MQTT, another front-end)
        messages = []
        for item in translate(status, info, record, self.clock()):
            if item[0] == "status":
                messages.append({"type": "status", "status": item[1],
                                 "request_id": record["request_id"]})  # fmt: skip
            elif self.security_events:
                messages.append(self._event(item[1], item[2]))
        self.outbox.put(messages)

    def pending(self):
        return bool(self.outbox.pending())

    def _event(self, kind, tech_info):
        return {"type": "security_event", "event": kind, "tech_info": str(tech_info)[:255],
                "timestamp": rfc3339(int(self.clock()))}  # fmt: skip

    # -- UpdateFirmware / SignedUpdateFirmware ------------------------------------------------

    def update_firmware(self, req):
        """req: {"request_id", "location", "retrieve_at", "install_at", "retries",
        "retry_interval_s", "signing_certificate", "signature", "allow_new_sessions",
        "defer_download_during_transaction"} -> an UpdateFirmwareStatusEnumType value."""
        problem = request_problem(req)
        if problem is not None:  # a stack's bug (a CSMS's wrong types fail its schema check)
            raise ValueError(problem)
        request_id = req["request_id"]
        if not req["location"].startswith(("https://", "http://")):
            # FileTransferProtocols: HTTP(S). Never a path on the station itself (file:).
            log.warning("request %s refused: location %r is not an http(s) URL",
                        request_id, req["location"][:80])  # fmt: skip
            return "Rejected"
        cert, signature = req.get("signing_certificate"), req.get("signature")
        if not cert or not signature:
            if self.options["secure_only"] or cert or signature:
                log.warning("request %s refused: no signing certificate and signature "
                            "(this station takes only signed firmware)", request_id)  # fmt: skip
                return "Rejected"
            cert = signature = None
        else:
            try:
                self.roots.check(cert, self.clock())
            except CertificateProblem as e:
                log.warning("request %s: %s", request_id, e.message)
                if self.security_events:
                    self.outbox.put([self._event(INVALID_CERTIFICATE_EVENT, e.message)])
                return e.status
        return self._submit(request_id, req, cert, signature)

    def _submit(self, request_id, req, cert, signature):
        job_id = "ocpp-%d-%s" % (request_id, os.urandom(3).hex())
        retries, interval = req.get("retries"), req.get("retry_interval_s")
        doc = {
            "id": job_id, "url": req.get("location"),
            "retrieve_at": req.get("retrieve_at"), "install_at": req.get("install_at"),
            "retries": self.options["retries"] if retries is None else min(max(retries, 0), 20),
            # OCPP sets no bound; the engine's is a day (a CSMS's week is not refused for it).
            "retry_interval_s": None if interval is None else min(max(interval, 0), 86400),
            "signature": signature, "signing_certificate": cert,
            "hold_until_allowed": self.hold,
            "block_new_sessions": not req.get("allow_new_sessions", False),
            "download_waits_for_sessions": bool(req.get("defer_download_during_transaction")),
            "write_during_sessions": bool(self.options["write_during_transactions"]),
        }  # fmt: skip
        record = {"request_id": request_id, "retrieve_at": _epoch(req.get("retrieve_at")),
                  "install_at": _epoch(req.get("install_at"))}  # fmt: skip
        self.outbox.remember(job_id, record)  # before the answer: statuses find their id
        if self.daemon is None:
            answer, detail = "rejected", "the agent is starting"
        else:
            answer, detail = self.daemon.submit(doc)
        log.info("request %s (job %s): %s %s", request_id, job_id, answer, detail)
        if answer == "accepted":
            return "Accepted"
        if answer == "accepted-canceled":
            return "AcceptedCanceled"
        self.outbox.forget(job_id)
        return "Rejected"

    def allow_installation(self):
        if self.daemon is not None:
            self.daemon.allow_installation()

    # -- boot ---------------------------------------------------------------------------------

    def boot_reason(self):
        """FirmwareUpdate when the agent rebooted the board into this boot, else None."""
        return getattr(self.daemon, "boot_reason", None)

    def boot_notification(self, status, **details):
        """The stack's BootNotification of this boot was answered `status`."""
        with self.boot_cond:
            self.boot = dict(details, boot_status=str(status), reported_at=int(self.clock()))
            self.boot_cond.notify_all()

    def boot_accepted(self, timeout):
        """Evidence that the CSMS accepted this boot's BootNotification (the trial's
        communication check), waiting up to `timeout` s; NetworkError otherwise."""
        with self.boot_cond:
            self.boot_cond.wait_for(self._accepted, timeout)
            boot = dict(self.boot) if self.boot else None
        if boot is None or boot["boot_status"] != "Accepted":
            seen = boot["boot_status"] if boot else "no BootNotification result"
            raise NetworkError("%s stack: CSMS did not accept this boot (%s)" % (self.name, seen))
        return dict(boot, reported_by=self.name)

    def _accepted(self):
        return bool(self.boot) and self.boot["boot_status"] == "Accepted"

    # -- what the stack sends -------------------------------------------------------------------

    def events(self, wait_s):
        """Outbox entries to send now, oldest first (none before the boot was accepted);
        waits at most `wait_s` in all for there to be some."""
        deadline = time.monotonic() + wait_s
        if self.gate_on_boot:
            with self.boot_cond:
                if not self.boot_cond.wait_for(self._accepted, wait_s):
                    return []
        return self.outbox.wait(max(deadline - time.monotonic(), 0))

    def ack(self, seq, error=None):
        return self.outbox.ack(seq, error)

    def trigger(self):
        """TriggerMessage(FirmwareStatusNotification) -> {"status", "request_id"}."""
        return trigger_answer(self.outbox.last_status())

    # -- ManufacturerRootCertificate ----------------------------------------------------------

    def install_certificate(self, certificate_type, certificate):
        if certificate_type != MANUFACTURER_ROOT:
            return "Rejected"  # other kinds belong to the stack's own certificate store
        return self.roots.install(certificate, self.clock())

    def delete_certificate(self, hash_data):
        return self.roots.delete(hash_data)

    def installed_certificate_ids(self, certificate_types=None):
        """(GetInstalledCertificateStatusEnumType, [CertificateHashData])."""
        if certificate_types and MANUFACTURER_ROOT not in certificate_types:
            return "NotFound", []
        ids = self.roots.ids()
        return ("Accepted" if ids else "NotFound"), ids


# UpdateFirmware fields a stack passes on, and the types each may have (None: absent).
REQUEST_FIELDS = (
    ("request_id", (int,)), ("location", (str,)), ("retrieve_at", (str, int)),
    ("install_at", (str, int)), ("retries", (int,)), ("retry_interval_s", (int,)),
    ("signing_certificate", (str,)), ("signature", (str,)), ("allow_new_sessions", (bool,)),
    ("defer_download_during_transaction", (bool,)),
)  # fmt: skip


def request_problem(req):
    """What is wrong with an update_firmware request's types, or None."""
    if not isinstance(req, dict):
        return "request must be an object"
    for name, types in REQUEST_FIELDS:
        value = req.get(name)
        if value is None:
            if name in ("request_id", "location"):
                return "%s is missing" % name
            continue
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            return "%s must be %s, not %s" % (
                name, " or ".join(t.__name__ for t in types), type(value).__name__
            )  # fmt: skip
    for name in ("retrieve_at", "install_at"):
        if isinstance(req.get(name), str) and _epoch(req[name]) is None:
            return "%s is not an RFC 3339 time: %r" % (name, req[name][:40])
    return None


def _epoch(value):
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return rfc3339_to_epoch(value)
    return None
