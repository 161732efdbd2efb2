"""EVerest's `system` interface, implemented by the agent as an outside MQTT client of
EVerest's system_API module (AsyncAPI: everest-core docs/source/reference/EVerest_API/
system_API.yaml; topics everest_api/1/system/<module_id>/{e2m,m2e}/<operation>).

Invariants: every e2m request carrying headers.replyTo is answered on that topic with the
bare JSON value the AsyncAPI document names (UpdateFirmwareResponse, BootReason,
ResetAllowed, ...), well inside EVerest's cfg_request_reply_to_s; statuses go out on
m2e/firmware_update_status as {"firmware_update_status", "request_id"}, in order, from the
durable outbox, once EVerest's side is seen alive; m2e/communication_check carries `true`
every `communication_check_s` (EVerest drops the module after cfg_communication_check_to_s,
5 s) and `false` on a clean stop. Installation and the reboot wait for
allow_firmware_installation (libocpp sends it once every EVSE is unavailable); EVerest's
libocpp checks the signing certificate too and sends the security events itself, so none
are sent from here. EVerest passes OCPP retries + 1 (attempts); they are converted back.
"""

import json
import logging
import threading
import time

from agent.core import lifecycle as lc
from agent.core.errors import UpdateError
from agent.frontends.channel import merged_settings
from agent.frontends.ocpp.service import FirmwareService

log = logging.getLogger("charger-update")
MAX_REQUEST_BYTES = 64 * 1024  # a FirmwareUpdateRequest with its certificate is under 16 KiB

DEFAULTS = {
    "host": "127.0.0.1",  # EVerest's MQTT broker (mosquitto on the charger)
    "port": 1883,
    "module_id": "system_api",  # the system_API module's id in EVerest's config
    "api_base": "everest_api/1",  # some EVerest releases use everest_api/1.0 in their code
    "ocpp_module_id": "",  # an ocpp_consumer_API module: its boot_notification_response
    "communication_check_s": 2.0,
    "reboot_grace_s": 5.0,  # EVerest cannot confirm delivery: give libocpp this long
    "default_boot_reason": "PowerUp",  # a boot the agent did not cause
}


class EverestSystem:
    def __init__(self, cfg, channel=None, clock=time.time):
        options = cfg.options("everest", DEFAULTS)
        self.options = options
        self.clock = clock
        self.base = "%s/system/%s" % (options["api_base"], options["module_id"])
        self.ocpp_base = None
        if options["ocpp_module_id"]:
            self.ocpp_base = "%s/ocpp_consumer/%s" % (
                options["api_base"],
                options["ocpp_module_id"],
            )
        self.service = FirmwareService(
            cfg,
            "everest",
            clock=clock,
            security_events=False,
            hold=True,
            gate_on_boot=self.ocpp_base is not None,
        )
        self.reboot_grace_s = float(options["reboot_grace_s"])
        self.channel = channel or self._channel(cfg)
        self.daemon = None
        self.stopping = threading.Event()
        self.alive = threading.Event()  # EVerest's side was heard from since we connected
        self.published_at = 0.0

    def _channel(self, cfg):
        from agent.frontends.mqtt_channel import MqttChannel

        o = self.options
        settings = merged_settings(
            {"host": o["host"], "port": o["port"], "reconnect_max_s": 5.0, "protocol": "3.1.1"}
        )
        client_id = "charger-update-%s-%s" % (cfg.device["id"], o["module_id"])
        return MqttChannel(settings, None, will=False, client_id=client_id)

    def __repr__(self):
        return "EverestSystem(%s)" % self.base

    # -- the front-end interface (agent/control/frontends.py) --------------------------------

    def start(self, daemon):
        self.daemon = daemon
        self.service.start(daemon)
        self.channel.subscribe_raw(self.base + "/e2m/#", self._on_request)
        if self.ocpp_base:
            self.channel.subscribe_raw(
                self.ocpp_base + "/e2m/boot_notification_response", self._on_boot_response
            )
        self.channel.start()
        for target, name in (
            (self._communication_check, "everest-check"),
            (self._pump, "everest-status"),
        ):
            threading.Thread(target=target, name=name, daemon=True).start()

    def stop(self):
        self.stopping.set()
        try:
            self._publish(self.topic("communication_check"), False)
        except UpdateError:
            pass
        self.channel.stop()

    def status(self, status, info):
        self.service.status(status, info)

    def pending(self):
        recent = self.clock() < self.published_at + self.reboot_grace_s
        return self.service.pending() or recent

    @property
    def reports_boot(self):
        """Only ocpp_consumer_API's boot_notification_response tells of the CSMS's answer."""
        return self.ocpp_base is not None

    def boot_accepted(self, timeout):
        return self.service.boot_accepted(timeout)

    # -- topics -------------------------------------------------------------------------------

    def topic(self, name):
        return "%s/m2e/%s" % (self.base, name)

    def _publish(self, topic, value):
        self.channel.publish_raw(topic, json.dumps(value).encode(), qos=1, wait_s=5)

    def _communication_check(self):
        # "Alive" only once requests can reach us: EVerest asks right after hearing from us.
        while not self.stopping.is_set() and not self.channel.wait_subscribed(1.0):
            pass
        while not self.stopping.is_set():
            try:
                self._publish(self.topic("communication_check"), True)
            except UpdateError as e:
                log.debug("communication_check not published: %s", e)
            self.stopping.wait(float(self.options["communication_check_s"]))

    def _pump(self):
        """The outbox to m2e/firmware_update_status, once EVerest was heard from."""
        while not self.stopping.is_set():
            if not self.alive.wait(1.0):
                continue
            for entry in self.service.events(1.0):
                if entry["type"] != "status":  # libocpp sends the security events itself
                    self.service.ack(entry["seq"])
                    continue
                value = {
                    "firmware_update_status": entry["status"],
                    "request_id": _request_id(entry.get("request_id")),
                }
                try:
                    self._publish(self.topic("firmware_update_status"), value)
                except UpdateError as e:
                    log.warning("firmware_update_status not published (%s); will retry", e)
                    self.stopping.wait(1.0)
                    break
                self.published_at = self.clock()
                self.service.ack(entry["seq"])

    # -- e2m requests -------------------------------------------------------------------------

    def _on_request(self, topic, raw):
        self.alive.set()
        operation = topic[len(self.base) + len("/e2m/") :]
        if operation == "heartbeat":
            return
        if operation == "allow_firmware_installation":
            self.service.allow_installation()
            return
        handler = REQUESTS.get(operation)
        if handler is None:
            log.info("EVerest %s not handled", operation)
            return
        try:
            payload, reply_to = decode_request(raw)
        except ValueError as e:
            log.warning("EVerest %s: %s", operation, e)
            return
        # Off paho's network thread: an update request waits for the engine's answer.
        worker = threading.Thread(target=self._answer, daemon=True,
                                  args=(handler, payload, reply_to))  # fmt: skip
        worker.start()

    def _answer(self, handler, payload, reply_to):
        try:
            value = handler(self, payload)
        except Exception:  # a bug must not leave EVerest waiting: it would time out anyway
            log.exception("EVerest request failed")
            return
        if reply_to and value is not None:
            try:
                self._publish(reply_to, value)
            except (UpdateError, ValueError) as e:  # ValueError: paho refused the topic
                log.warning("reply to %s not published: %s", reply_to, e)

    def _on_boot_response(self, topic, raw):
        try:
            if len(raw) > MAX_REQUEST_BYTES:
                raise ValueError("oversized")
            response = json.loads(raw.decode("utf-8"))
            self.service.boot_notification(
                str(response["status"]),
                interval=response.get("interval"),
                csms_time=response.get("current_time"),
            )
        except (UnicodeError, ValueError, KeyError, TypeError, RecursionError):
            log.warning("EVerest boot_notification_response malformed: %r", raw[:200])

    # -- the operations -----------------------------------------------------------------------

    def update_firmware(self, request):
        """FirmwareUpdateRequest -> UpdateFirmwareResponse."""
        if not isinstance(request, dict):
            return "Rejected"
        attempts = request.get("retries")
        retries = None
        if isinstance(attempts, int) and not isinstance(attempts, bool):
            retries = max(attempts - 1, 0)  # EVerest passes OCPP retries + 1
        fields = {
            "request_id": request.get("request_id"),
            "location": request.get("location"),
            "retrieve_at": request.get("retrieve_timestamp"),
            "install_at": request.get("install_timestamp"),
            "retries": retries,
            "retry_interval_s": request.get("retry_interval_s"),
            "signing_certificate": request.get("signing_certificate"),
            "signature": request.get("signature"),
            # libocpp makes the EVSEs unavailable itself and then allows the installation.
            "allow_new_sessions": True,
        }
        try:
            return self.service.update_firmware(fields)
        except ValueError as e:  # EVerest's schema was not followed: say so, answer
            log.warning("EVerest update_firmware refused: %s", e)
            return "Rejected"

    def boot_reason(self, _payload):
        return self.service.boot_reason() or self.options["default_boot_reason"]

    def is_reset_allowed(self, _payload):
        journey = getattr(self.daemon, "journey", None)
        return journey is None or journey.state not in (lc.INSTALLING, lc.REBOOTING)

    def reset(self, payload):
        log.info("EVerest asks for a reset (%s)", payload)
        if self.daemon is not None:
            self.daemon.system.reboot()


def decode_request(raw):
    """(payload, reply_to) of an e2m request's bytes, or ValueError saying why it is not
    answered: more than MAX_REQUEST_BYTES, not JSON (also nested past the parser's depth), or
    a headers.replyTo that is not a topic one may publish to."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ValueError("%d bytes, more than a request has" % len(raw))
    try:
        message = json.loads(bytes(raw).decode("utf-8")) if raw else {}
    except (UnicodeError, ValueError, RecursionError):
        raise ValueError("payload is not JSON") from None
    if not isinstance(message, dict) or not ({"headers", "payload"} & set(message)):
        message = {"payload": message}  # e2m/reset carries its ResetRequest bare
    headers = message.get("headers")
    reply_to = headers.get("replyTo") if isinstance(headers, dict) else None
    if reply_to is not None and not _publishable(reply_to):
        raise ValueError("headers.replyTo is not a topic: %r" % (reply_to,))
    return message.get("payload"), reply_to


def _publishable(topic):
    """An MQTT topic one may publish to: no wildcards, no NUL, within MQTT's length."""
    if not isinstance(topic, str) or not 0 < len(topic.encode("utf-8", "replace")) <= 65535:
        return False
    return not any(c in topic for c in "+#\x00")


def _request_id(value):
    return -1 if value is None else value  # EVerest's convention for "no request id"


REQUESTS = {
    "update_firmware": EverestSystem.update_firmware,
    "get_boot_reason": EverestSystem.boot_reason,
    "is_reset_allowed": EverestSystem.is_reset_allowed,
    "reset": EverestSystem.reset,
    "upload_logs": lambda self, payload: {"upload_logs_status": "Rejected"},
    "set_system_time": lambda self, payload: False,
}
