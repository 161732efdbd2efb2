"""The paho-mqtt adapter: the only module that imports paho.

Invariant: paho's return codes and exceptions stop here. Callers see BrokerUnavailable
(Transient) or ConfigError (Rejected), and handlers see only decoded JSON objects (see
agent/frontends/channel.py). The network thread never raises: every callback is guarded. While the
channel runs it reconnects by itself with exponential back-off, re-subscribes, and re-publishes
the retained online marker; the broker publishes the retained offline last will when the
connection dies without a clean stop.
"""

import logging
import os
import socket
import ssl
import sys
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.core.errors import BrokerUnavailable, ConfigError
from agent.frontends.channel import ONLINE, ChannelBase, encode_payload

log = logging.getLogger(__name__)


class _Client(paho.Client):
    """paho's client, except that its network thread waits in select() for up to a quarter
    of the keepalive instead of paho's fixed 1 s, so an idle agent wakes a few times a
    minute. Nothing waits longer because of it: a publish from another thread wakes select
    through paho's socket pair, and a quarter keepalive still sends every PINGREQ well
    before the broker's 1.5 x keepalive grace runs out."""

    select_timeout_s = 1.0

    def loop_forever(self, timeout=None, retry_first_connection=False):
        if timeout is None:
            timeout = self.select_timeout_s
        return paho.Client.loop_forever(self, timeout, retry_first_connection)


class MqttChannel(ChannelBase):
    """One MQTT connection for one identity (a device, or the backend with device_id
    "backend" and will=False).

    settings: host, port, prefix, protocol ("5" | "3.1.1"), keepalive, tls {ca_file,
    cert_file, key_file}, username, password, reconnect_min_s, reconnect_max_s,
    connect_timeout_s, max_message_bytes, session_expiry_s (see agent.frontends.channel.DEFAULTS).
    """

    def __init__(
        self,
        settings,
        device_id,
        on_message=None,
        on_error=None,
        wall_clock=time.time,
        will=True,
        client_id=None,
        online_info=None,
    ):
        ChannelBase.__init__(self, settings, device_id, on_message, on_error)
        self.wall_clock = wall_clock
        self.will = will
        self.client_id = client_id or device_id
        self.online_info = dict(online_info or {})  # extra fields for the online marker
        self.connections = 0  # successful CONNACKs so far
        self.last_error = ""
        self._last_log_error = ""  # paho reports socket/TLS failures only through its log
        self._connected = threading.Event()
        self._attempted = threading.Event()  # the first attempt ended (either way)
        self._cond = threading.Condition()
        self._client = None
        self._aborting = False
        self._pending_subacks = set()  # mids of SUBSCRIBEs not yet acknowledged
        self._early_subacks = set()  # acknowledged before we recorded them as pending

    # -- life cycle -------------------------------------------------------------------------

    def start(self):
        """Begin connecting in the background; returns at once. Reconnects forever until
        stop(). Raises ConfigError for unusable TLS files (retrying cannot fix those)."""
        if self._client is not None:
            return
        s = self.settings
        self._aborting = False
        self._client = client = self._make_client()
        client.reconnect_delay_set(s["reconnect_min_s"], s["reconnect_max_s"])
        properties = None
        if s["protocol"] == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = int(s["session_expiry_s"])
        try:
            client.connect_async(
                s["host"],
                int(s["port"]),
                int(s["keepalive"]),
                # v5: keep the session (queued QoS 1 jobs) across reconnects; v3.1.1 does
                # the same through clean_session=False in the constructor.
                clean_start=False if s["protocol"] == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(
                "cannot connect to %s:%s: %s" % (s["host"], s["port"], exc)
            ) from None
        client.loop_start()

    def _make_client(self):
        s = self.settings
        v5 = s["protocol"] == "5"
        client = _Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            # Every message is acknowledged by _dispatch: at once, or by a manual_ack handler
            # once it has saved what the message asked for (channel.ChannelBase.subscribe).
            manual_ack=True,
        )
        client.select_timeout_s = max(1.0, int(s["keepalive"]) / 4.0)
        if s["username"]:
            client.username_pw_set(s["username"], s["password"] or None)
        if s["tls"]:
            self._set_tls(client, s["tls"])
        if self.will and self.device_id:
            offline = encode_payload({"device_id": self.device_id, "online": False})
            client.will_set(self.topic(ONLINE), offline, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_log = self._on_log
        client.on_socket_open = self._on_socket_open
        return client

    def _set_tls(self, client, tls):
        # ca_file empty: the system store. cert_file/key_file: both (client certificate, the
        # normal case for a charger) or neither (server authentication only).
        keys = ["ca_file"] if tls.get("ca_file") else []
        if tls.get("cert_file") or tls.get("key_file"):
            keys += ["cert_file", "key_file"]
        for key in keys:
            path = tls.get(key)
            if not path or not os.path.isfile(path):
                raise ConfigError(
                    "[mqtt.tls] %s %r is not a readable file" % (key, path),
                    hint="point it at the PEM file provisioned for this charger",
                )
        try:
            client.tls_set(
                ca_certs=tls.get("ca_file") or None,
                certfile=tls.get("cert_file") or None,
                keyfile=tls.get("key_file") or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise ConfigError("[mqtt.tls] unusable certificate or key: %s" % exc) from None

    def connect(self, timeout=None):
        """start() and wait for the first attempt: return once connected, raise
        BrokerUnavailable if it was refused or did not finish in time (the channel keeps
        retrying in the background until stop())."""
        if timeout is None:
            timeout = self.settings["connect_timeout_s"]
        self.start()
        self._attempted.wait(timeout)
        if not self._connected.is_set():
            s = self.settings
            raise BrokerUnavailable(
                "MQTT broker %s:%s not reachable: %s"
                % (s["host"], s["port"], self.last_error or "no answer within %ss" % timeout),
                hint="check host, port, TLS certificates and the broker's ACL",
            )

    def stop(self):
        """Publish offline (retained), disconnect cleanly and end the network thread."""
        client, self._client = self._client, None
        if client is None:
            return
        if self._connected.is_set() and self.will and self.device_id:
            info = client.publish(
                self.topic(ONLINE), self._online_payload(False), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        client.disconnect()
        client.loop_stop()
        self._connected.clear()

    def abort(self):
        """Drop the connection without DISCONNECT, as a power cut would (the broker then
        publishes the last will). The channel stays stopped."""
        client, self._client = self._client, None
        if client is None:
            return
        self._aborting = True  # on_disconnect ends paho's loop instead of reconnecting
        sock = client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            client.disconnect()
        client.loop_stop()
        self._connected.clear()

    # -- state ------------------------------------------------------------------------------

    @property
    def connected(self):
        return self._connected.is_set()

    def wait_connected(self, timeout=None):
        return self._connected.wait(timeout)

    def wait_disconnected(self, timeout=None):
        """True once the connection is down (the broker went away or stop()/abort())."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._connected.is_set(), timeout)

    def wait_connections(self, count, timeout=None):
        """True once at least `count` connections succeeded (reconnects count)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.connections >= count, timeout)

    # -- traffic ----------------------------------------------------------------------------

    def publish(self, suffix, payload, qos=1, retain=False):
        """Publish on {prefix}/{device_id}/{suffix}. QoS >= 1 messages are queued while
        disconnected and sent after reconnect; QoS 0 raises BrokerUnavailable then."""
        return self.publish_to(self.topic(suffix), payload, qos, retain)

    def publish_to(self, topic, payload, qos=1, retain=False, wait_s=None):
        """Publish a JSON object on an absolute topic (the backend's way to reach devices).
        wait_s: block until the broker acknowledged it, else BrokerUnavailable."""
        return self.publish_raw(topic, encode_payload(payload), qos, retain, wait_s)

    def publish_raw(self, topic, data, qos=1, retain=False, wait_s=None):
        """Publish bytes as they are (rigs and tests use it to send hostile payloads)."""
        client = self._client
        if client is None:
            raise BrokerUnavailable("MQTT channel is not started")
        info = client.publish(topic, data, qos=qos, retain=retain)
        rc = info.rc
        if rc == paho.MQTT_ERR_NO_CONN and qos > 0:
            rc = paho.MQTT_ERR_SUCCESS  # paho keeps it and sends it after reconnecting
        if rc != paho.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable("publish to %s failed: %s" % (topic, paho.error_string(rc)))
        if wait_s is not None:
            try:
                info.wait_for_publish(timeout=wait_s)
            except (RuntimeError, ValueError) as exc:
                raise BrokerUnavailable("publish to %s not sent: %s" % (topic, exc)) from None
            if not info.is_published():
                raise BrokerUnavailable("publish to %s not acknowledged in %ss" % (topic, wait_s))
        return info.mid

    def _transport_subscribe(self, topic_filter, qos):
        client = self._client
        if client is not None and self._connected.is_set():
            self._send_subscribe(client, topic_filter, qos)
        # Otherwise on_connect subscribes everything in the handler table.

    def _send_subscribe(self, client, topic_filter, qos):
        rc, mid = client.subscribe(topic_filter, qos)
        if rc == paho.MQTT_ERR_SUCCESS:
            with self._cond:
                # The SUBACK may already have been handled by the network thread.
                if mid in self._early_subacks:
                    self._early_subacks.discard(mid)
                else:
                    self._pending_subacks.add(mid)

    def wait_subscribed(self, timeout=None):
        """True once connected and every SUBSCRIBE sent so far is acknowledged, so messages
        published from another connection after this returns reach our handlers."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._connected.is_set() and not self._pending_subacks, timeout
            )

    # -- paho callbacks (network thread: must never raise) -----------------------------------

    def _online_payload(self, online):
        payload = dict(self.online_info)
        payload["device_id"] = self.device_id
        payload["online"] = online
        payload["ts"] = int(self.wall_clock())
        return encode_payload(payload)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        try:
            if reason_code.is_failure:
                self.last_error = "refused by broker: %s" % reason_code
                self._attempted.set()
                return
            with self._lock:
                filters = [(h[0], h[2]) for h in self._handlers]
            for topic_filter, qos in filters:
                self._send_subscribe(client, topic_filter, qos)
            if self.will and self.device_id:
                client.publish(self.topic(ONLINE), self._online_payload(True), qos=1, retain=True)
            self.last_error = ""
            with self._cond:
                self.connections += 1
                self._connected.set()
                self._cond.notify_all()
            self._attempted.set()
            if self.on_connected is not None:
                self.on_connected()
        except Exception:
            log.exception("on_connect failed")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.warning("subscription %s refused by broker: %s", mid, ", ".join(failed))
        with self._cond:
            if mid in self._pending_subacks:
                self._pending_subacks.discard(mid)
            else:
                self._early_subacks.add(mid)
            self._cond.notify_all()

    def _on_connect_fail(self, client, userdata):
        # paho calls this inside its `except OSError:` block, so the cause is still at hand.
        exc = sys.exc_info()[1]
        self.last_error = "%s: %s" % (type(exc).__name__, exc) if exc else "connection failed"
        self._attempted.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self._aborting:
            client.disconnect()  # marks paho's state so its loop exits without reconnecting
        was_connected = self._connected.is_set()
        self._connected.clear()
        with self._cond:
            self._pending_subacks.clear()  # re-sent by on_connect
            self._cond.notify_all()
        if reason_code != 0:
            cause, self._last_log_error = self._last_log_error, ""
            self.last_error = "connection lost: %s" % (cause or reason_code)
            log.warning("MQTT %s (was connected: %s)", self.last_error, was_connected)
        self._attempted.set()

    def _on_log(self, client, userdata, level, buf):
        # paho reports ordinary shutdown races at its ERR level, so its log stays at DEBUG;
        # real failures surface through last_error and BrokerUnavailable instead.
        log.debug("paho: %s", buf)
        if level == paho.MQTT_LOG_ERR:
            self._last_log_error = buf

    def _on_socket_open(self, client, userdata, sock):
        # Small request/answer packets (PUBACK then PUBLISH) otherwise wait on Nagle plus
        # delayed ACK: ~40 ms per hop on loopback.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_message(self, client, userdata, message):
        mid, qos = message.mid, message.qos
        try:
            self._dispatch(message.topic, message.payload, lambda: client.ack(mid, qos))
        except Exception:  # _dispatch already guards; belt and braces for paho's thread
            log.exception("dispatch failed")
