"""The charging stack's OCPP 2.0.1 client: the station's own connection to its CSMS.

At boot it sends BootNotification (reason PowerUp, with the running firmware version), then
heartbeats; every session start and stop becomes a TransactionEvent. It reconnects with
back-off, so a firmware whose uplink is broken (`no-backend`) simply never gets through.
Runs its own event loop in a thread; the stack calls `transaction()` from any thread.
"""

import asyncio
import datetime
import threading

from ocpp.v201 import ChargePoint, call
from websockets.asyncio.client import connect


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class OcppClient:
    def __init__(self, url, station_id, model, firmware_version, log):
        self.url = url.rstrip("/") + "/" + station_id
        self.station_id = station_id
        self.station = {"model": model, "vendor_name": "charger-fw",
                        "firmware_version": firmware_version}  # fmt: skip
        self.log = log
        self.loop = asyncio.new_event_loop()
        self.cp = None
        self.seq = 0

    def start(self):
        threading.Thread(target=self.loop.run_until_complete, args=(self._run(),),
                         name="ocpp", daemon=True).start()  # fmt: skip
        return self

    async def _run(self):
        delay = 0.5
        while True:
            try:
                async with connect(self.url, subprotocols=["ocpp2.0.1"], open_timeout=5) as ws:
                    self.cp = ChargePoint(self.station_id, ws)
                    reader = asyncio.ensure_future(self.cp.start())
                    boot = await self.cp.call(call.BootNotification(
                        charging_station=self.station, reason="PowerUp"))  # fmt: skip
                    self.log("OCPP: BootNotification %s" % boot.status)
                    delay = 0.5
                    while not reader.done():
                        await asyncio.sleep(min(boot.interval, 30))  # the heartbeat period
                        await self.cp.call(call.Heartbeat())
            except Exception as e:  # CSMS away or link down: try again later
                self.cp = None
                self.log("OCPP: no CSMS (%s); retrying in %.1fs" % (e.__class__.__name__, delay))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)

    def transaction(self, event_type, tx_id, id_tag, energy_wh):
        """Report a session Started/Ended; dropped (logged) while the CSMS is unreachable."""
        cp = self.cp
        if cp is None:
            self.log("OCPP: transaction %s %s not sent (no CSMS)" % (tx_id, event_type))
            return
        self.seq += 1
        message = call.TransactionEvent(
            event_type=event_type,
            timestamp=_now(),
            trigger_reason="Authorized" if event_type == "Started" else "StopAuthorized",
            seq_no=self.seq,
            transaction_info={"transaction_id": tx_id},
            id_token={"id_token": id_tag, "type": "Central"},
            meter_value=[{"timestamp": _now(), "sampled_value": [{"value": energy_wh}]}],
        )
        asyncio.run_coroutine_threadsafe(cp.call(message), self.loop)
