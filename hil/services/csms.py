"""A real OCPP CSMS on loopback (the `ocpp` package over `websockets`), for tests, the virtual
board and `make demo`: OCPP 2.0.1 and OCPP 1.6J with the security extension.

Runs `websockets.serve` on a free 127.0.0.1 port in a background thread with its own event
loop. Invariant: every message a station sends is recorded (boots, heartbeats, transactions,
firmware statuses, security events, connector statuses) before the CSMS answers it, each with
its place in the order of arrival across all kinds (`position`), so a test that saw an answer
can read the record and check what came before what. `call` sends a CSMS-initiated request
(UpdateFirmware, TriggerMessage, InstallCertificate, ...) to a connected station and returns
its answer.

    with csms(boot_status="Accepted") as server:
        probe(server.url, "cp-1", timeout=5)
        assert server.boots[0]["reason"] == "FirmwareUpdate"
"""

import asyncio
import contextlib
import datetime
import errno
import json
import threading

from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint, call_result
from websockets.asyncio.server import serve

from hil.services.mosquitto import free_port


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _value(enum_or_str):
    return str(getattr(enum_or_str, "value", enum_or_str))


class _Recorder:
    """What both protocol handlers share: recording into the server, refusing on request,
    catching the replies to raw frames (send_raw) before the library sees them."""

    async def route_message(self, raw_msg):
        try:
            frame = json.loads(raw_msg)
            unique_id = frame[1] if isinstance(frame, list) and frame[0] in (3, 4) else None
        except (ValueError, IndexError, TypeError):
            unique_id = None
        if unique_id is not None and self.server._raw_reply(unique_id, frame):
            return
        await super().route_message(raw_msg)

    def _refuse(self, action):
        if action in self.server.refuse:
            raise OcppNotImplemented("this CSMS does not take %s" % action)

    def _firmware(self, action, status, request_id):
        self.server._record("firmware", {"id": self.id, "status": _value(status),
                                         "request_id": request_id})  # fmt: skip
        self._refuse(action)

    def _security(self, kind, tech_info):
        self.server._record("security_events", {"id": self.id, "type": kind,
                                                "tech_info": tech_info})  # fmt: skip
        self._refuse("SecurityEventNotification")


class _StationHandler(_Recorder, ChargePoint):
    """One connected OCPP 2.0.1 charging station, as the CSMS sees it."""

    def __init__(self, cp_id, connection, server):
        ChargePoint.__init__(self, cp_id, connection)
        self.server = server

    @on("BootNotification")
    async def on_boot_notification(self, charging_station, reason, **kwargs):
        self.server._record("boots", {"id": self.id, "reason": reason, "station": charging_station})
        if self.server.boot_status == "CallError":
            raise RuntimeError("CSMS fault")  # ocpp answers a handler exception with CALLERROR
        return call_result.BootNotification(
            current_time=_now(), interval=300, status=self.server.boot_status
        )

    @on("TransactionEvent")
    async def on_transaction_event(self, event_type, transaction_info, **kwargs):
        energy = None
        for meter in kwargs.get("meter_value") or []:
            for sample in meter.get("sampled_value", []):
                energy = sample.get("value")
        id_token = (kwargs.get("id_token") or {}).get("id_token")
        tx = transaction_info.get("transaction_id")
        record = {"id": self.id, "event": event_type, "tx": tx, "id_token": id_token,
                  "energy_wh": energy}  # fmt: skip
        self.server._record("transactions", record)
        return call_result.TransactionEvent()

    @on("Heartbeat")
    async def on_heartbeat(self, **kwargs):
        self.server._record("heartbeats", {"id": self.id})
        if not self.server.answer_heartbeat:
            await self.server._silence.wait()  # never answers while the server runs
        return call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    async def on_status_notification(self, connector_status, evse_id, connector_id, **kw):
        self.server._record("connectors", {"id": self.id, "status": connector_status,
                                           "evse": evse_id, "connector": connector_id})  # fmt: skip
        return call_result.StatusNotification()

    @on("FirmwareStatusNotification")
    async def on_firmware_status(self, status, request_id=None, **kwargs):
        self._firmware("FirmwareStatusNotification", status, request_id)
        return call_result.FirmwareStatusNotification()

    @on("SecurityEventNotification")
    async def on_security_event(self, type, timestamp, tech_info=None, **kwargs):
        self._security(type, tech_info)
        return call_result.SecurityEventNotification()


class _Station16Handler(_Recorder, ChargePoint16):
    """One connected OCPP 1.6J (security whitepaper) charge point, as the CSMS sees it."""

    def __init__(self, cp_id, connection, server):
        ChargePoint16.__init__(self, cp_id, connection)
        self.server = server
        self.next_tx = 1

    @on("BootNotification")
    async def on_boot_notification(self, charge_point_vendor, charge_point_model, **kwargs):
        station = {"vendor_name": charge_point_vendor, "model": charge_point_model,
                   "firmware_version": kwargs.get("firmware_version")}  # fmt: skip
        self.server._record("boots", {"id": self.id, "reason": None, "station": station})
        status = self.server.boot_status
        return result16.BootNotification(current_time=_now(), interval=300, status=status)

    @on("Heartbeat")
    async def on_heartbeat(self, **kwargs):
        self.server._record("heartbeats", {"id": self.id})
        return result16.Heartbeat(current_time=_now())

    @on("StatusNotification")
    async def on_status_notification(self, connector_id, error_code, status, **kwargs):
        record = {"id": self.id, "status": _value(status), "evse": connector_id,
                  "connector": connector_id}  # fmt: skip
        self.server._record("connectors", record)
        return result16.StatusNotification()

    @on("StartTransaction")
    async def on_start_transaction(self, connector_id, id_tag, meter_start, timestamp, **kw):
        tx, self.next_tx = self.next_tx, self.next_tx + 1
        record = {"id": self.id, "event": "Started", "tx": tx, "id_token": id_tag,
                  "energy_wh": meter_start}  # fmt: skip
        self.server._record("transactions", record)
        return result16.StartTransaction(transaction_id=tx, id_tag_info={"status": "Accepted"})

    @on("StopTransaction")
    async def on_stop_transaction(self, meter_stop, timestamp, transaction_id, **kwargs):
        record = {"id": self.id, "event": "Ended", "tx": transaction_id,
                  "id_token": kwargs.get("id_tag"), "energy_wh": meter_stop}  # fmt: skip
        self.server._record("transactions", record)
        return result16.StopTransaction()

    @on("SignedFirmwareStatusNotification")
    async def on_signed_firmware_status(self, status, request_id=None, **kwargs):
        self._firmware("SignedFirmwareStatusNotification", status, request_id)
        return result16.SignedFirmwareStatusNotification()

    @on("FirmwareStatusNotification")
    async def on_firmware_status(self, status, **kwargs):
        self._firmware("FirmwareStatusNotification", status, None)
        return result16.FirmwareStatusNotification()

    @on("SecurityEventNotification")
    async def on_security_event(self, type, timestamp, tech_info=None, **kwargs):
        self._security(type, tech_info)
        return result16.SecurityEventNotification()


HANDLERS = {"ocpp1.6": _Station16Handler}


class Csms:
    """boot_status: "Accepted" | "Rejected" | "Pending" | "CallError" (answer with an OCPP
    CALLERROR); answer_heartbeat=False makes the CSMS go silent after the boot; subprotocols
    changes what the server offers; refuse: actions answered with CALLERROR NotImplemented
    (an old CSMS that does not know SecurityEventNotification, say)."""

    def __init__(
        self,
        boot_status="Accepted",
        answer_heartbeat=True,
        port=None,
        subprotocols=("ocpp2.0.1",),
        host="127.0.0.1",
        refuse=(),
    ):
        self.boot_status = boot_status
        self.answer_heartbeat = answer_heartbeat
        self.subprotocols = list(subprotocols)
        self.host = host
        self.picked = not port  # a port of our choosing: another may be picked if it is taken
        self.port = port or free_port()
        self.url = "ws://%s:%d/ocpp" % (self.host, self.port)
        self.refuse = set(refuse)
        self.boots = []
        self.heartbeats = []
        self.transactions = []  # TransactionEvents (1.6: Start/StopTransaction) from stations
        self.firmware = []  # (Signed)FirmwareStatusNotifications: status, request_id
        self.security_events = []
        self.connectors = []  # StatusNotifications: connector status
        self.connections = []  # (charge point id, negotiated subprotocol)
        self.stations = {}  # charge point id -> handler of its latest connection
        self.timeline = []  # (kind, record) of every record, in order of arrival
        self._raw_replies = {}  # unique id of a send_raw frame -> the station's reply frame
        self._lock = threading.Condition()
        self._loop = None
        self._thread = None
        self._stop = None
        self._silence = None

    def _record(self, kind, entry):
        with self._lock:
            records = getattr(self, kind)
            if isinstance(entry, dict):
                entry["n"] = len(records)  # order of arrival, for "since" waits
            self.timeline.append((kind, entry))
            records.append(entry)
            self._lock.notify_all()

    def wait_for(self, kind, predicate, timeout):
        """The first record of `kind` ("boots", "transactions", ...) matching predicate."""
        with self._lock:
            found = []

            def match():
                found[:] = [e for e in getattr(self, kind) if predicate(e)]
                return bool(found)

            if not self._lock.wait_for(match, timeout):
                raise TimeoutError(
                    "CSMS saw no matching %s in %ss (it has: %s)"
                    % (kind, timeout, getattr(self, kind)[-8:])
                )
            return found[0]

    def wait_timeline(self, after, timeout):
        """The (kind, record) pairs that arrived after the first `after`, waiting up to
        `timeout` s for at least one (an empty list when none came)."""
        with self._lock:
            self._lock.wait_for(lambda: len(self.timeline) > after, timeout)
            return list(self.timeline[after:])

    def position(self, record):
        """Where `record` (one of the lists' entries) came in the order of all messages."""
        with self._lock:
            for i, (_, entry) in enumerate(self.timeline):
                if entry is record:
                    return i
        raise ValueError("not a record of this CSMS")

    def records(self, kind):
        with self._lock:
            return list(getattr(self, kind))

    @property
    def boot_reasons(self):
        with self._lock:
            return [b["reason"] for b in self.boots]

    def call(self, cp_id, message, timeout=30.0):
        """Send `message` (an ocpp call payload) to station `cp_id`; its answer, or the
        CALLERROR raised as an OCPPError."""
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        with self._lock:
            if not self._lock.wait_for(lambda: cp_id in self.stations, timeout):
                raise TimeoutError("station %s is not connected" % cp_id)
            station = self.stations[cp_id]
        left = max((deadline - datetime.datetime.now()).total_seconds(), 1.0)
        future = asyncio.run_coroutine_threadsafe(station.call(message, suppress=False),
                                                  self._loop)  # fmt: skip
        return future.result(left)

    def send_raw(self, cp_id, text, unique_id=None, timeout=10.0):
        """Send the frame `text` as it is (malformed, mistyped, oversized: what no library
        would send); with `unique_id`, wait for the station's reply frame and return it
        ([3, id, payload] or [4, id, code, description, details]), else None on timeout."""
        with self._lock:
            if not self._lock.wait_for(lambda: cp_id in self.stations, timeout):
                raise TimeoutError("station %s is not connected" % cp_id)
            station = self.stations[cp_id]
            if unique_id is not None:
                self._raw_replies[unique_id] = None
        sent = asyncio.run_coroutine_threadsafe(station._connection.send(text), self._loop)
        sent.result(timeout)
        if unique_id is None:
            return None
        with self._lock:
            self._lock.wait_for(lambda: self._raw_replies[unique_id] is not None, timeout)
            return self._raw_replies.pop(unique_id)

    def _raw_reply(self, unique_id, frame):
        with self._lock:
            if unique_id not in self._raw_replies:
                return False
            self._raw_replies[unique_id] = frame
            self._lock.notify_all()
            return True

    async def _on_connection(self, connection):
        cp_id = connection.request.path.rstrip("/").split("/")[-1]
        self._record("connections", (cp_id, connection.subprotocol))
        handler = HANDLERS.get(connection.subprotocol, _StationHandler)(cp_id, connection, self)
        with self._lock:
            self.stations[cp_id] = handler
            self._lock.notify_all()
        try:
            await handler.start()
        except Exception:  # the station hung up; nothing to clean
            pass
        finally:
            with self._lock:
                if self.stations.get(cp_id) is handler:
                    del self.stations[cp_id]

    async def _serve(self, ready):
        self._stop = asyncio.Event()
        self._silence = asyncio.Event()
        async with serve(
            self._on_connection, self.host, self.port, subprotocols=self.subprotocols or None
        ):
            ready.set()
            await self._stop.wait()
            self._silence.set()

    def start(self, timeout=10.0):
        """Serve on self.port; a port this CSMS picked itself that another process bound
        first (between free_port() and the bind: pytest-xdist neighbours) is picked again,
        up to 3 times."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except OSError as e:
                if not self.picked or e.errno != errno.EADDRINUSE or attempt == 2:
                    why = "CSMS did not start on port %d: %s" % (self.port, e)
                    raise RuntimeError(why) from None
                self.port = free_port()
                self.url = "ws://%s:%d/ocpp" % (self.host, self.port)

    def _start(self, timeout):
        ready = threading.Event()
        errors = []

        def run():
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._serve(ready))
            except Exception as exc:
                errors.append(exc)
                ready.set()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="csms", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("CSMS did not start on port %d within %ss" % (self.port, timeout))
        if errors:
            self._thread.join(timeout)
            self._thread = None
            if isinstance(errors[0], OSError):
                raise errors[0]
            raise RuntimeError("CSMS did not start on port %d: %r" % (self.port, errors))
        return self

    def stop(self, timeout=10.0):
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        self._thread = None


@contextlib.contextmanager
def csms(**kw):
    server = Csms(**kw).start()
    try:
        yield server
    finally:
        server.stop()
