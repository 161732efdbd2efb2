"""The control-plane channel seen by the daemon: topics, message decoding, handler dispatch.

Invariant: an incoming message reaches a handler only as a JSON object no larger than the
bound; anything else goes to `on_error(topic, reason, detail)` and the channel keeps working.
Neither a bad message nor a failing handler ever raises into the transport's thread.
`FakeChannel` has the same interface as `MqttChannel` (agent/frontends/mqtt_channel.py, the
only module that imports paho) and records what would have been published, for core and
daemon tests.
"""

import json
import logging
import os
import threading

from agent.core import messages
from agent.core.errors import BrokerUnavailable, ConfigError

log = logging.getLogger(__name__)

# Topic suffixes below {prefix}/{device_id}/: defined once, in agent/core/messages.py, which
# the operator side (fleet/) shares.
JOB, CANCEL, STATUS = messages.JOB, messages.CANCEL, messages.STATUS
INVENTORY, HEALTH, ONLINE = messages.INVENTORY, messages.HEALTH, messages.ONLINE
PING, PONG, SUFFIXES = messages.PING, messages.PONG, messages.SUFFIXES

DEFAULTS = {
    "host": "127.0.0.1",
    "port": 1883,
    "prefix": messages.DEFAULT_PREFIX,
    "protocol": "5",  # "5" or "3.1.1"
    "keepalive": 30,
    "tls": None,  # {"ca_file", "cert_file", "key_file"}; absent or empty: plain TCP
    "username": "",
    "password": "",
    "reconnect_min_s": 0.5,
    "reconnect_max_s": 60.0,
    "connect_timeout_s": 10.0,
    "max_message_bytes": 64 * 1024,
    "session_expiry_s": 86400,  # broker keeps QoS 1 jobs this long while we are offline
}

# Reasons handed to on_error.
OVERSIZED = "oversized"
NOT_UTF8 = "not-utf8"
MALFORMED_JSON = "malformed-json"
NOT_OBJECT = "not-object"
HANDLER_FAILED = "handler-failed"


class MessageError(Exception):
    def __init__(self, reason, detail):
        Exception.__init__(self, "%s: %s" % (reason, detail))
        self.reason = reason
        self.detail = detail


def merged_settings(settings):
    out = dict(DEFAULTS)
    out.update(settings or {})
    if str(out["protocol"]) not in ("5", "3.1.1"):
        raise ConfigError('[mqtt] protocol must be "5" or "3.1.1", not %r' % (out["protocol"],))
    out["protocol"] = str(out["protocol"])
    return out


def settings_from_config(config):
    """[mqtt] of the agent's Config -> (settings for MqttChannel, device_id). TLS paths are
    taken relative to the config file; an unknown key is a ConfigError (catches typos)."""
    raw = dict(config.section("mqtt"))
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            "%s: unknown key(s) in [mqtt]: %s" % (config.path, ", ".join(unknown)),
            hint="known keys: %s" % ", ".join(sorted(DEFAULTS)),
        )
    tls = raw.get("tls")
    if tls:
        raw["tls"] = dict((k, config.resolve(v) if v else v) for k, v in tls.items())
    return merged_settings(raw), config.device["id"]


def decode_payload(raw, limit):
    """bytes -> dict, or MessageError with the reason. The size check comes first so an
    oversized message is never parsed."""
    if len(raw) > limit:
        raise MessageError(OVERSIZED, "%d bytes, limit %d" % (len(raw), limit))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(NOT_UTF8, str(exc)) from None
    try:
        value = json.loads(text)
    # RecursionError: "[[[[..." nested deeper than the parser recurses (64 KiB allow it).
    except (ValueError, RecursionError) as exc:
        raise MessageError(MALFORMED_JSON, str(exc)) from None
    if not isinstance(value, dict):
        raise MessageError(NOT_OBJECT, "top level is %s, expected an object" % type(value).__name__)
    return value


encode_payload = messages.encode


def topic_matches(topic_filter, topic):
    """MQTT filter match with + and # (enough for dispatch; the broker does the real one)."""
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or (part != "+" and part != t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)


class Ack:
    """Acknowledges one message once, whoever calls it and however often."""

    def __init__(self, send=None):
        self.send = send
        self.done = False
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            if self.done:
                return
            self.done = True
        if self.send is not None:
            try:
                self.send()
            except Exception:  # the connection may be gone: the broker redelivers then
                log.exception("acknowledging a message failed")


def new_nonce():
    return os.urandom(8).hex()


class ChannelBase:
    """Topic naming, handler table and safe dispatch shared by MqttChannel and FakeChannel."""

    def __init__(self, settings, device_id, on_message=None, on_error=None):
        self.settings = merged_settings(settings)
        self.device_id = device_id
        self.prefix = self.settings["prefix"]
        self.on_message = on_message  # fallback for messages no handler claims
        self.on_error = on_error
        self.on_connected = None  # called (no arguments) after every successful (re)connect
        self._handlers = []  # [(filter, handler, qos, manual_ack)]
        self._lock = threading.Lock()
        self._pongs = {}  # nonce -> threading.Event, for ping_backend
        self.stray_pongs = 0  # pongs whose nonce we are not waiting for (late or forged)

    def topic(self, suffix, device_id=None):
        return messages.topic(self.prefix, device_id or self.device_id, suffix)

    def device_of(self, topic):
        """The device id in `{prefix}/{device}/...`, or None for foreign topics."""
        parts = topic.split("/")
        n = len(self.prefix.split("/"))
        if topic.startswith(self.prefix + "/") and len(parts) > n:
            return parts[n]
        return None

    def subscribe(self, suffix, handler, qos=1, manual_ack=False):
        """handler(topic, payload_dict) for {prefix}/{device_id}/{suffix}. With manual_ack,
        handler(topic, payload_dict, ack): the message is acknowledged to the broker only
        when the handler (or whoever it hands `ack` to) calls ack(); until then a dropped
        connection gets it redelivered (QoS 1, persistent session)."""
        self.subscribe_filter(self.topic(suffix), handler, qos, manual_ack)

    def subscribe_filter(self, topic_filter, handler, qos=1, manual_ack=False):
        """handler(topic, payload_dict) for an absolute filter (the backend uses `+`)."""
        with self._lock:
            self._handlers.append((topic_filter, handler, qos, manual_ack))
        self._transport_subscribe(topic_filter, qos)

    def subscribe_raw(self, topic_filter, handler, qos=1):
        """handler(topic, payload_bytes) for an absolute filter, without the JSON-object rule:
        for peers whose payloads are JSON strings, numbers or empty (EVerest's API)."""
        self.subscribe_filter(topic_filter, _Raw(handler), qos)

    def _transport_subscribe(self, topic_filter, qos):
        raise NotImplementedError

    def _dispatch(self, topic, raw, ack=None):
        """Decode and hand to handlers; never raises (runs in the transport's thread).

        ack(): acknowledges the message to the broker. It is called here, after the handlers,
        unless a manual_ack handler took it over; a message that cannot be decoded is
        acknowledged at once (a redelivery would be refused the same way)."""
        ack = Ack(ack)
        with self._lock:
            raw_handlers = [h for f, h, _, _ in self._handlers
                            if isinstance(h, _Raw) and topic_matches(f, topic)]  # fmt: skip
        if raw_handlers:
            for handler in raw_handlers:
                try:
                    handler(topic, bytes(raw))
                except Exception as exc:  # a handler bug must not kill the network thread
                    log.exception("handler for %s failed", topic)
                    self._report(topic, HANDLER_FAILED, "%s: %s" % (type(exc).__name__, exc))
            ack()
            return
        try:
            payload = decode_payload(raw, self.settings["max_message_bytes"])
        except MessageError as exc:
            self._report(topic, exc.reason, exc.detail)
            ack()
            return
        with self._lock:
            handlers = [(h, m) for f, h, _, m in self._handlers if topic_matches(f, topic)]
        if not handlers and self.on_message is not None:
            handlers = [(self.on_message, False)]
        owner = None
        for handler, manual in handlers:
            try:
                if manual and owner is None:
                    owner = handler
                    handler(topic, payload, ack)
                else:
                    handler(topic, payload)
            except Exception as exc:  # a handler bug must not kill the network thread
                log.exception("handler for %s failed", topic)
                self._report(topic, HANDLER_FAILED, "%s: %s" % (type(exc).__name__, exc))
                if handler is owner:
                    ack()
        if owner is None:
            ack()

    def _report(self, topic, reason, detail):
        log.warning("rejected message on %s: %s (%s)", topic, reason, detail)
        if self.on_error is None:
            return
        try:
            self.on_error(topic, reason, detail)
        except Exception:
            log.exception("on_error callback failed")

    # -- comm round trip ------------------------------------------------------------------

    def link_state(self):
        """A few words on the broker link, for error messages and evidence."""
        if self.connected:
            return "broker link up"
        return "broker link down: %s" % (getattr(self, "last_error", "") or "not connected")

    def _on_pong(self, topic, payload):
        with self._lock:
            event = self._pongs.get(payload.get("nonce"))
            if event is None:
                self.stray_pongs += 1
        if event is not None:
            event.set()

    def ping_backend(self, timeout, clock=None):
        """Publish {nonce} on backend/ping, wait for the same nonce on backend/pong.
        Returns evidence {"nonce", "rtt_s"}; raises BrokerUnavailable when unanswered."""
        import time

        clock = clock or time.monotonic
        with self._lock:
            first = not any(h[0] == self.topic(PONG) for h in self._handlers)
        if first:
            self.subscribe(PONG, self._on_pong)
        nonce = new_nonce()
        event = threading.Event()
        with self._lock:
            self._pongs[nonce] = event
        try:
            started = clock()
            self.publish(PING, {"nonce": nonce, "device_id": self.device_id}, qos=1)
            if not event.wait(timeout):
                raise BrokerUnavailable(
                    "backend did not answer ping %s within %ss (%s)"
                    % (nonce, timeout, self.link_state()),
                    hint="check the backend responder and the broker",
                )
            return {"nonce": nonce, "rtt_s": round(clock() - started, 4)}
        finally:
            with self._lock:
                self._pongs.pop(nonce, None)


class _Raw:
    """Marks a handler that takes the payload as bytes (ChannelBase.subscribe_raw)."""

    def __init__(self, handler):
        self.handler = handler

    def __call__(self, topic, raw):
        return self.handler(topic, raw)


class FakeChannel(ChannelBase):
    """MqttChannel's interface without a broker: `published` records (topic, payload, qos,
    retain); `inject(suffix_or_topic, payload)` delivers as if from the broker (bytes go
    through the same size/JSON checks); `answer_pings` makes ping_backend succeed."""

    def __init__(self, settings=None, device_id="dev-1", on_message=None, on_error=None):
        ChannelBase.__init__(self, settings, device_id, on_message, on_error)
        self.published = []
        self.subscriptions = []
        self.connected = False
        self.answer_pings = True
        self.started = False

    def start(self):
        self.started = True
        self.connected = True

    def connect(self, timeout=None):
        self.start()
        if not self.connected:
            raise BrokerUnavailable("fake broker is down")

    def stop(self):
        self.connected = False
        self.started = False

    def wait_connected(self, timeout=None):
        return self.connected

    def wait_subscribed(self, timeout=None):
        return self.connected

    def set_connected(self, up):
        self.connected = bool(up)

    def _transport_subscribe(self, topic_filter, qos):
        self.subscriptions.append((topic_filter, qos))

    def publish(self, suffix, payload, qos=1, retain=False):
        return self.publish_to(self.topic(suffix), payload, qos, retain)

    def publish_to(self, topic, payload, qos=1, retain=False):
        if not self.connected and qos == 0:
            raise BrokerUnavailable("not connected; QoS 0 message to %s dropped" % topic)
        self.published.append((topic, payload, qos, retain))
        if topic == self.topic(PING) and self.answer_pings and self.connected:
            self._dispatch(self.topic(PONG), encode_payload({"nonce": payload["nonce"]}))

    def inject(self, suffix_or_topic, payload):
        """Deliver as the broker would; returns the message's Ack (`.done` once acknowledged)."""
        topic = suffix_or_topic
        if suffix_or_topic in SUFFIXES:
            topic = self.topic(suffix_or_topic)
        raw = payload if isinstance(payload, bytes) else encode_payload(payload)
        ack = Ack()
        self._dispatch(topic, raw, ack)
        return ack

    def messages(self, suffix):
        """Payloads published on our own {suffix} topic, in order."""
        topic = self.topic(suffix)
        return [p for t, p, _, _ in self.published if t == topic]
