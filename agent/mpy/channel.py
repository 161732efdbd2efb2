"""The MQTT channel of the board, on micropython-lib's umqtt (umqtt.simple2 from PyPI): the
topics, payloads and QoS of docs/mqtt-api.md over MQTT 3.1.1 with a persistent session.

Statuses and rows wait in a bounded outbox until the broker acknowledges them (PUBACK), and are
sent again after a reconnect, so a broker outage loses nothing but the oldest entries of a
full outbox. Incoming jobs and cancels are handed to the agent inside umqtt's callback, which
umqtt acknowledges only after it returns: a job is acknowledged after the journal saved it.

Invariant: nothing here raises into the agent for a broker problem; `connected` says how the
link is, and every message is one compact, sorted JSON object no larger than the bound.
"""

import json
import time

from agent.mpy.jsonout import dumps

JOB = "update/job"
CANCEL = "update/cancel"
STATUS = "update/status"
INVENTORY = "update/inventory"
HEALTH = "update/health"
ONLINE = "update/online"
PING = "backend/ping"
PONG = "backend/pong"

SOCKET_TIMEOUT_S = 5
HANDSHAKE_S = 20
OUTBOX = 32  # messages kept while the broker is away (oldest status dropped first)
# Nesting a message may have: ours are 3 deep. MicroPython's json.loads keeps a stack per
# level, so 30,000 brackets within the size bound end in a MemoryError (issue 11).
MAX_DEPTH = 16


class Channel:
    def __init__(self, settings, device_id, client_factory=None):
        self.host = settings.get("host", "127.0.0.1")
        # {"ca_file", "cert_file", "key_file"} as on the Linux agent; absent or empty: plain TCP
        self.tls = settings.get("tls") or None
        self.tls_context = None  # made at the first connection (agent/mpy/tls.py)
        self.port = int(settings.get("port", 8883 if self.tls else 1883))
        self.username = settings.get("username") or None
        self.password = settings.get("password") or None
        self.prefix = settings.get("prefix", "chargers")
        self.keepalive = int(settings.get("keepalive", 30))
        self.max_bytes = int(settings.get("max_message_bytes", 65536))
        self.backoff_max = float(settings.get("reconnect_max_s", 30))
        self.device_id = device_id
        self.factory = client_factory or _umqtt_client
        self.client = None
        self.connected = False
        self.connections = 0
        self.last_error = ""
        self.handlers = {}  # suffix -> fn(payload dict)
        self.on_error = None  # fn(suffix, reason, detail)
        self.outbox = []  # [topic, bytes, retain, pid or None]
        self.retry_at = 0
        self.backoff = 0.5
        self.last_io = 0
        self.version = None

    def topic(self, suffix):
        return "%s/%s/%s" % (self.prefix, self.device_id, suffix)

    def subscribe(self, suffix, handler):
        self.handlers[suffix] = handler

    # -- link ---------------------------------------------------------------------------

    def poll(self, budget=8):
        """Connect when due, then handle up to `budget` incoming packets; never raises."""
        now = time.time()
        if not self.connected:
            if now >= self.retry_at:
                self._connect(now)
            return
        try:
            for _ in range(budget):
                if self.client.check_msg() is None:
                    break
            if now - self.last_io >= self.keepalive / 2:
                self.client.ping()
                self.last_io = now
            self._flush()
        except Exception as e:  # umqtt raises MQTTException and OSError alike
            self._lost(e)

    def _connect(self, now):
        will = dumps({"device_id": self.device_id, "online": False}).encode()
        client = None
        try:
            client = self.factory(self)
            client.set_callback(self._on_message)
            client.set_callback_status(self._on_status)
            client.set_last_will(self.topic(ONLINE), will, True, 1)
            try:
                client.connect(clean_session=False)
            finally:
                if self.tls:
                    _forget_tls(client)
            for suffix in self.handlers:
                client.subscribe(self.topic(suffix), 1)
        except Exception as e:
            _close(client)  # a socket per failed attempt would run the board out of them
            self.last_error = _describe(e)
            self.retry_at = now + self.backoff
            self.backoff = min(self.backoff * 2, self.backoff_max)
            print("MQTT backend unreachable (%s); retry in %.1fs" % (self.last_error, self.backoff))
            return
        self.client, self.connected, self.backoff = client, True, 0.5
        self.connections += 1
        self.last_io = now
        for entry in self.outbox:
            entry[3] = None  # unacknowledged: send again on this connection
        online = {"device_id": self.device_id, "online": True, "ts": int(now)}
        if self.version:
            online["version"] = self.version
        self.publish(ONLINE, online, retain=True)

    def _lost(self, error):
        self.last_error = "%s: %s" % (type(error).__name__, error)
        print("MQTT link lost (%s)" % self.last_error)
        _close(self.client)
        self.connected = False
        self.retry_at = time.time() + self.backoff

    def stop(self):
        if self.connected:
            try:
                now = int(time.time())
                payload = {"device_id": self.device_id, "online": False, "ts": now}
                self.client.publish(self.topic(ONLINE), dumps(payload).encode(), True, 1)
                self.client.disconnect()
            except Exception:
                pass
        self.connected = False

    # -- out ----------------------------------------------------------------------------

    def publish(self, suffix, payload, retain=False, on_ack=None):
        data = dumps(payload).encode()
        if retain:  # a retained row replaces any older one still waiting
            self.outbox = [e for e in self.outbox if e[0] != self.topic(suffix)]
        self.outbox.append([self.topic(suffix), data, retain, None, on_ack])
        while len(self.outbox) > OUTBOX:
            self.outbox.pop(0)
        if self.connected:
            try:
                self._flush()
            except Exception as e:
                self._lost(e)

    def _flush(self):
        for entry in self.outbox:
            if entry[3] is None:
                entry[3] = self.client.publish(entry[0], entry[1], entry[2], 1)
                self.last_io = time.time()

    def _on_status(self, pid, status):
        # umqtt.simple2: 1 = PUBACK/SUBACK arrived, 0 = timed out (send again), 2 = unknown.
        for entry in self.outbox:
            if entry[3] == pid:
                if status == 1:
                    self.outbox.remove(entry)
                    if entry[4] is not None:
                        entry[4]()
                elif status == 0:
                    entry[3] = None
                return

    def pending(self):
        return len(self.outbox)

    def drain(self, timeout):
        """Wait (polling) until the broker acknowledged everything, at most `timeout` s."""
        end = time.time() + timeout
        while self.outbox and self.connected and time.time() < end:
            self.poll()
            time.sleep(0.01)

    def ping(self, timeout, wait):
        """Round trip to the backend: {"nonce", "rtt_s"}, or None when no pong came back."""
        import binascii
        import os

        nonce = binascii.hexlify(os.urandom(8)).decode()
        self.pongs = []
        started = time.time()
        self.publish(PING, {"nonce": nonce, "device_id": self.device_id})
        deadline = started + timeout
        while time.time() < deadline:
            if nonce in self.pongs:
                return {"nonce": nonce, "rtt_s": round(time.time() - started, 4)}
            wait(0.02)
        return None

    def on_pong(self, payload):
        pongs = getattr(self, "pongs", [])
        pongs.append(payload.get("nonce"))
        self.pongs = pongs[-8:]

    # -- in -----------------------------------------------------------------------------

    def _on_message(self, topic, msg, retained=False, dup=False):
        topic = topic.decode() if isinstance(topic, bytes) else topic
        suffix = topic[len(self.topic("")) :]
        handler = self.handlers.get(suffix)
        if handler is None:
            return
        if len(msg) > self.max_bytes:
            return self._refuse(suffix, "oversized", "%d bytes" % len(msg))
        if _depth_over(msg, MAX_DEPTH):
            return self._refuse(suffix, "malformed-json", "nested deeper than %d" % MAX_DEPTH)
        try:
            payload = json.loads(msg)
        except (ValueError, UnicodeError):
            return self._refuse(suffix, "malformed-json", "not UTF-8 JSON")
        except MemoryError:  # a heap too fragmented for this message: drop it, not the agent
            import gc

            gc.collect()
            return self._refuse(suffix, "oversized", "no heap to parse %d bytes" % len(msg))
        if not isinstance(payload, dict):
            return self._refuse(suffix, "not-object", "top level is not an object")
        handler(payload)

    def _refuse(self, suffix, reason, detail):
        print("rejected message on %s: %s (%s)" % (suffix, reason, detail))
        if self.on_error is not None:
            self.on_error(suffix, reason, detail)


def _depth_over(msg, limit):
    """True when the JSON text `msg` (bytes or str) nests brackets deeper than `limit`
    (brackets inside strings do not count)."""
    if isinstance(msg, str):
        msg = msg.encode()
    depth, in_string, escaped = 0, False, False
    for c in msg:
        if in_string:
            if escaped:
                escaped = False
            elif c == 92:  # backslash
                escaped = True
            elif c == 34:  # quote
                in_string = False
        elif c == 34:
            in_string = True
        elif c == 91 or c == 123:  # [ {
            depth += 1
            if depth > limit:
                return True
        elif c == 93 or c == 125:  # ] }
            depth -= 1
    return False


def _describe(error):
    text = "%s: %s" % (type(error).__name__, error)
    code = error.args[0] if type(error).__name__ == "MQTTException" and error.args else None
    # umqtt.simple2 raises MQTTException(20 + the CONNACK return code) for a refused
    # connection. Built here, not at import: only a failed connection needs the words.
    refused = {
        21: "unacceptable protocol version",
        22: "client id rejected",
        23: "server unavailable",
        24: "bad user name or password",
        25: "not authorised",
    }
    if code in refused:
        text += (" (the broker refused the connection: %s; check mqtt username/password or "
                 "the client certificate)" % refused[code])  # fmt: skip
    return text


def _close(client):
    for name in ("sock", "sock_raw"):  # umqtt's TLS socket and the TCP one under it
        try:
            getattr(client, name).close()
        except Exception:  # absent, None or closed already
            pass


def _forget_tls(client):
    """After the handshake: the TLS helpers leave the heap (the context stays, on the channel,
    for the next connection)."""
    from agent.mpy.phase import drop

    drop(("ussl", "agent.mpy.tls", "agent.mpy.tlsio"))


def _umqtt_client(channel):
    # Imported at the first connection, before any phase: a module first imported inside a
    # phase would be dropped with it (agent/mpy/phase.py) while the client lives on.
    from umqtt.simple2 import MQTTClient

    if channel.tls:
        import sys

        from agent.mpy import tls

        # Made at the first connection, while the heap is young, and kept: a reconnect in
        # the middle of an install may not find 3 KiB in one piece.
        if channel.tls_context is None:
            channel.tls_context = tls.context(channel.tls, "mqtt.tls")
        # The whole handshake, however slowly the peer sends it (it holds the loop meanwhile).
        handshake_s = channel.tls.get("handshake_s", HANDSHAKE_S)  # checked by tls.context
        sys.modules["ussl"] = tls.Umqtt(channel.tls_context, SOCKET_TIMEOUT_S, handshake_s)
    return MQTTClient(channel.device_id, channel.host, channel.port, user=channel.username,
                      password=channel.password, keepalive=channel.keepalive,
                      ssl=bool(channel.tls), ssl_params={"server_hostname": channel.host},
                      socket_timeout=SOCKET_TIMEOUT_S, message_timeout=10)  # fmt: skip
