"""A real OCPP 2.0.1 CSMS on loopback (the `ocpp` package over `websockets`), for tests, the
virtual board and `make demo`.

Runs `websockets.serve` on a free 127.0.0.1 port in a background thread with its own event
loop. Invariant: every BootNotification and Heartbeat the CSMS received is recorded (boots,
heartbeats) before it answers, so a test that saw an answer can read the record.

    with csms(boot_status="Accepted") as server:
        probe(server.url, "cp-1", timeout=5)
        assert server.boots[0]["reason"] == "FirmwareUpdate"
"""

import asyncio
import contextlib
import datetime
import threading

from ocpp.routing import on
from ocpp.v201 import ChargePoint, call_result
from websockets.asyncio.server import serve

from hil.services.mosquitto import free_port


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _StationHandler(ChargePoint):
    """One connected charging station, as the CSMS sees it."""

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


class Csms:
    """boot_status: "Accepted" | "Rejected" | "Pending" | "CallError" (answer with an OCPP
    CALLERROR); answer_heartbeat=False makes the CSMS go silent after the boot; subprotocols
    changes what the server offers."""

    def __init__(
        self,
        boot_status="Accepted",
        answer_heartbeat=True,
        port=None,
        subprotocols=("ocpp2.0.1",),
        host="127.0.0.1",
    ):
        self.boot_status = boot_status
        self.answer_heartbeat = answer_heartbeat
        self.subprotocols = list(subprotocols)
        self.host = host
        self.port = port or free_port()
        self.url = "ws://%s:%d/ocpp" % (self.host, self.port)
        self.boots = []
        self.heartbeats = []
        self.transactions = []  # TransactionEvents from stations' own OCPP clients
        self.connections = []  # (charge point id, negotiated subprotocol)
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
                raise TimeoutError("CSMS saw no matching %s in %ss" % (kind, timeout))
            return found[0]

    @property
    def boot_reasons(self):
        with self._lock:
            return [b["reason"] for b in self.boots]

    async def _on_connection(self, connection):
        cp_id = connection.request.path.rstrip("/").split("/")[-1]
        self._record("connections", (cp_id, connection.subprotocol))
        try:
            await _StationHandler(cp_id, connection, self).start()
        except Exception:  # the station hung up; nothing to clean
            pass

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
        if not ready.wait(timeout) or errors:
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
