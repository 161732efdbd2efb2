"""An EVerest-side test double: what EVerest's system_API module and libocpp do on the MQTT
side of the `system` interface, speaking exactly the topics and payloads of the AsyncAPI
document (everest-core docs/source/reference/EVerest_API/system_API.yaml, and the
boot_notification_response of ocpp_consumer_API.yaml).

Every payload the agent sends is validated against the document's schemas (below, transcribed
from it); anything else is recorded in `violations`. Like libocpp, the double allows the
installation once it sees SignatureVerified (its EVSEs are then unavailable), asks for the
boot reason and reports an accepted BootNotification whenever the agent (re)appears.
"""

import datetime
import json
import threading
import time
import uuid

import jsonschema

from agent.frontends.channel import merged_settings
from agent.frontends.mqtt_channel import MqttChannel

FIRMWARE_STATUSES = [
    "Downloaded", "DownloadFailed", "Downloading", "DownloadScheduled", "DownloadPaused", "Idle",
    "InstallationFailed", "Installing", "Installed", "InstallRebooting", "InstallScheduled",
    "InstallVerificationFailed", "InvalidSignature", "SignatureVerified",
]  # fmt: skip
SCHEMAS = {
    "FirmwareUpdateRequest": {
        "type": "object", "required": ["location", "request_id"],
        "properties": {
            "retries": {"type": "integer", "minimum": 1},
            "retry_interval_s": {"type": "integer"}, "request_id": {"type": "integer"},
            "location": {"type": "string"}, "retrieve_timestamp": {"type": "string"},
            "install_timestamp": {"type": "string"}, "signing_certificate": {"type": "string"},
            "signature": {"type": "string"},
        },
    },
    "UpdateFirmwareResponse": {"type": "string", "enum": [
        "Accepted", "Rejected", "AcceptedCanceled", "InvalidCertificate", "RevokedCertificate"]},
    "FirmwareUpdateStatus": {
        "type": "object", "required": ["firmware_update_status", "request_id"],
        "properties": {"firmware_update_status": {"type": "string", "enum": FIRMWARE_STATUSES},
                       "request_id": {"type": "integer"}},
    },
    "BootReason": {"type": "string", "enum": [
        "ApplicationReset", "FirmwareUpdate", "LocalReset", "PowerUp", "RemoteReset",
        "ScheduledReset", "Triggered", "Unknown", "Watchdog"]},
    "ResetAllowed": {"type": "boolean"},
    "CommunicationCheck": {"type": "boolean"},
    "HeartBeatId": {"type": "integer"},
    "BootNotificationResponse": {
        "type": "object", "required": ["status", "current_time", "interval"],
        "properties": {"status": {"type": "string",
                                  "enum": ["Accepted", "Pending", "Rejected"]},
                       "current_time": {"type": "string"}, "interval": {"type": "integer"}},
    },
}  # fmt: skip
M2E = {  # what the agent may publish under m2e/, and its schema
    "firmware_update_status": "FirmwareUpdateStatus",
    "communication_check": "CommunicationCheck",
}


def check(schema, value):
    jsonschema.validate(value, SCHEMAS[schema])


class EverestDouble:
    def __init__(self, broker_port, module_id="system_api", ocpp_module_id="ocpp",
                 api_base="everest_api/1", auto_allow=True, restart_gap_s=4.5):  # fmt: skip
        self.base = "%s/system/%s" % (api_base, module_id)
        self.ocpp_base = "%s/ocpp_consumer/%s" % (api_base, ocpp_module_id)
        self.auto_allow = auto_allow
        self.restart_gap_s = restart_gap_s
        settings = merged_settings({"port": broker_port, "reconnect_max_s": 1.0})
        self.channel = MqttChannel(settings, None, will=False, client_id="everest-double")
        self.cond = threading.Condition()
        self.statuses = []  # (monotonic time, status, request_id)
        self.checks = []  # (monotonic time, value) of m2e/communication_check
        self.allowed = []  # monotonic times of e2m/allow_firmware_installation
        self.boot_reasons = []
        self.violations = []
        self.replies = {}
        self.stopping = threading.Event()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self):
        self.channel.subscribe_raw(self.base + "/m2e/#", self._on_m2e)
        self.channel.connect(10)
        assert self.channel.wait_subscribed(10)
        threading.Thread(target=self._heartbeat, daemon=True).start()
        return self

    def close(self):
        self.stopping.set()
        self.channel.stop()

    def _publish(self, topic, value):
        raw = b"" if value is None else json.dumps(value).encode()
        self.channel.publish_raw(topic, raw, qos=1, wait_s=5)

    def _heartbeat(self):
        beat = 0
        while not self.stopping.wait(1.0):
            beat += 1
            check("HeartBeatId", beat)
            self._publish(self.base + "/e2m/heartbeat", beat)

    # -- requests (EVerest -> agent) -------------------------------------------------------------

    def request(self, operation, payload=None, timeout=30.0):
        """A request with headers.replyTo; the agent's reply (None after `timeout`, which
        EVerest would turn into its default answer)."""
        reply_to = "%s/m2e/reply/%s" % (self.base, uuid.uuid4())
        message = {"headers": {"replyTo": reply_to}}
        if payload is not None:
            message["payload"] = payload
        self._publish("%s/e2m/%s" % (self.base, operation), message)
        with self.cond:
            self.cond.wait_for(lambda: reply_to in self.replies, timeout)
            return self.replies.pop(reply_to, None)

    def update_firmware(self, request):
        check("FirmwareUpdateRequest", request)
        answer = self.request("update_firmware", request)
        self._check("UpdateFirmwareResponse", answer, "update_firmware reply")
        return answer

    def allow_installation(self):
        with self.cond:
            self.allowed.append(time.monotonic())
        self._publish(self.base + "/e2m/allow_firmware_installation", None)

    def _libocpp_starts(self):
        """What libocpp does at its start: ask the boot reason, boot, publish the response."""
        reason = self.request("get_boot_reason", timeout=10)
        self._check("BootReason", reason, "get_boot_reason reply")
        with self.cond:
            self.boot_reasons.append(reason)
            self.cond.notify_all()
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        response = {"status": "Accepted", "current_time": now, "interval": 300}
        check("BootNotificationResponse", response)
        self._publish(self.ocpp_base + "/e2m/boot_notification_response", response)

    # -- what the agent publishes (agent -> EVerest) ----------------------------------------------

    def _check(self, schema, value, what):
        try:
            check(schema, value)
        except jsonschema.ValidationError as e:
            with self.cond:
                self.violations.append("%s: %s" % (what, e.message))

    def _on_m2e(self, topic, raw):
        name = topic[len(self.base) + len("/m2e/") :]
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeError, ValueError):
            with self.cond:
                self.violations.append("%s: payload is not JSON: %r" % (topic, raw[:80]))
            return
        if name.startswith("reply/"):
            with self.cond:
                self.replies[topic] = value
                self.cond.notify_all()
            return
        if name not in M2E:
            with self.cond:
                self.violations.append("%s is not an m2e topic of system_API" % topic)
            return
        self._check(M2E[name], value, topic)
        now = time.monotonic()
        if name == "communication_check":
            with self.cond:
                last = self.checks[-1] if self.checks else None
                self.checks.append((now, value))
            # The agent (re)started: first check, after its clean `false`, or after silence
            # (a power cut). On a charger EVerest restarts with the board; libocpp then asks.
            restarted = last is None or last[1] is False or now - last[0] > self.restart_gap_s
            if value and restarted:
                threading.Thread(target=self._libocpp_starts, daemon=True).start()
            return
        status, request_id = value.get("firmware_update_status"), value.get("request_id")
        with self.cond:
            self.statuses.append((now, status, request_id))
            self.cond.notify_all()
        if status == "SignatureVerified" and self.auto_allow:
            # libocpp: every EVSE unavailable, installation may go. Off this (the MQTT
            # client's) thread: the publish waits for the broker's acknowledgement.
            threading.Thread(target=self.allow_installation, daemon=True).start()

    def wait_status(self, request_id, wanted, timeout=60.0):
        wanted = (wanted,) if isinstance(wanted, str) else wanted
        with self.cond:
            found = []

            def match():
                found[:] = [s for s in self.statuses if s[2] == request_id and s[1] in wanted]
                return bool(found)

            if not self.cond.wait_for(match, timeout):
                raise TimeoutError("no %s for %s; statuses %s" % (wanted, request_id,
                                                                  self.statuses))  # fmt: skip
            return found[0]

    def names(self, request_id):
        with self.cond:
            return [s[1] for s in self.statuses if s[2] == request_id]
