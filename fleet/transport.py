"""The fleet's MQTT 5 connection (paho stays behind this one module of fleet/).

Invariant: with manual_ack, a QoS 1 message is acknowledged only when the caller says so
(after its database commit), and with a persistent session (clean_start false, a session
expiry) the broker keeps what arrives while the process is down; so a kill -9 loses no
status. Handlers run in paho's network thread and must not block: the controller queues.
"""

import logging
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet.errors import Unavailable

log = logging.getLogger("charger-fleet")


class Connection:
    """settings: host, port, tls {ca_file, cert_file, key_file}, username, password."""

    def __init__(
        self,
        settings,
        client_id,
        on_message=None,
        manual_ack=False,
        session_expiry_s=86400,
        will=None,
        max_inflight=1000,
    ):
        self.settings = settings
        self.client_id = client_id
        self.on_message = on_message  # (topic, payload bytes, mid, qos)
        self.subscriptions = []  # (filter, qos), re-sent on every connect
        self.connected = threading.Event()
        self._acked = threading.Condition()
        self._pending_subs = set()
        c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
        )
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)
        if settings.get("username"):
            c.username_pw_set(settings["username"], settings.get("password") or None)
        tls = settings.get("tls")
        if tls:
            c.tls_set(
                ca_certs=tls.get("ca_file") or None,
                certfile=tls.get("cert_file") or None,
                keyfile=tls.get("key_file") or None,
            )
        if will:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(0.2, 5.0)
        self.session_expiry_s = session_expiry_s
        self.client = c

    def subscribe(self, topic_filter, qos=1):
        self.subscriptions.append((topic_filter, qos))
        if self.connected.is_set():
            self._send_subscribe([(topic_filter, qos)])

    def start(self, timeout=15.0):
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.session_expiry_s)
        # Without it mosquitto keeps 20 messages in flight to us and queues at most 1000
        # more (max_queued_messages), dropping the rest: a retained inventory of thousands
        # of chargers would arrive cut short.
        props.ReceiveMaximum = 65535
        s = self.settings
        try:
            self.client.connect_async(
                s["host"], int(s["port"]), 30, clean_start=False, properties=props
            )
        except (OSError, ValueError) as e:
            raise Unavailable(
                "cannot reach MQTT broker %s:%s: %s" % (s["host"], s["port"], e)
            ) from None
        self.client.loop_start()
        if not self.wait_ready(timeout):
            self.stop()
            raise Unavailable(
                "MQTT broker %s:%s did not accept us within %ss" % (s["host"], s["port"], timeout),
                hint="check --mqtt host:port and that the broker runs",
            )
        return self

    def wait_ready(self, timeout):
        with self._acked:
            return self._acked.wait_for(
                lambda: self.connected.is_set() and not self._pending_subs, timeout
            )

    def stop(self, leave=False):
        """Disconnect. leave=True also ends the broker session: a controller that is gone
        for good must leave, or the broker keeps handing it its share of the statuses."""
        self.client.disconnect()
        with self._acked:  # on_disconnect runs once the DISCONNECT is written
            self._acked.wait_for(lambda: not self.connected.is_set(), 5.0)
        self.client.loop_stop()
        self.connected.clear()
        if leave:
            forget_session(self.settings, self.client_id)

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise Unavailable("publish to %s failed: %s" % (topic, paho.error_string(info.rc)))
        return info

    def ack(self, mid, qos):
        if qos > 0:
            self.client.ack(mid, qos)

    def _send_subscribe(self, pairs):
        for i in range(0, len(pairs), 500):
            rc, mid = self.client.subscribe(pairs[i : i + 500])
            if rc == paho.MQTT_ERR_SUCCESS:
                with self._acked:
                    self._pending_subs.add(mid)

    # paho callbacks: network thread, never raise
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("broker refused %s: %s", self.client_id, reason_code)
            return
        self.connected.set()
        if self.subscriptions:
            self._send_subscribe(list(self.subscriptions))
        with self._acked:
            self._acked.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._acked:
            self._pending_subs.discard(mid)
            self._acked.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        with self._acked:
            self._pending_subs.clear()
            self._acked.notify_all()

    def _on_message(self, client, userdata, msg):
        try:
            if self.on_message is not None:
                self.on_message(msg.topic, msg.payload, msg.mid, msg.qos)
        except Exception:
            log.exception("message handler failed on %s", msg.topic)


def forget_session(settings, client_id, timeout=15.0):
    """End the broker session of `client_id` for certain: connect with a clean start (the
    broker drops the old session, its queue and its share of the subscriptions at once) and
    a session expiry of 0 (the new one ends with the connection). A DISCONNECT carrying
    expiry 0 is not enough: seen here, one sent while the broker floods a resumed session
    with queued messages can be lost, and the session then lives on."""
    done = threading.Event()
    c = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
    )
    if settings.get("username"):
        c.username_pw_set(settings["username"], settings.get("password") or None)
    tls = settings.get("tls")
    if tls:
        c.tls_set(
            ca_certs=tls.get("ca_file") or None,
            certfile=tls.get("cert_file") or None,
            keyfile=tls.get("key_file") or None,
        )
    c.on_connect = lambda client, userdata, flags, rc, props: done.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    try:
        c.connect(settings["host"], int(settings["port"]), 30, clean_start=True, properties=props)
    except (OSError, ValueError) as e:
        raise Unavailable(
            "cannot reach MQTT broker to end session %s: %s" % (client_id, e)
        ) from None
    c.loop_start()
    try:
        if not done.wait(timeout):
            raise Unavailable("MQTT broker did not answer; session %s may live on" % client_id)
    finally:
        c.disconnect()
        c.loop_stop()
