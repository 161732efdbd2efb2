"""The charging stack's OCPP client: the station's own connection to its CSMS, in OCPP 2.0.1
or OCPP 1.6J with the security whitepaper (stack.toml picks one).

At boot it asks the update agent why the board booted (FirmwareUpdate after the agent's
reboot), sends BootNotification, and once the CSMS accepted it tells the agent so, reports the
connector and starts handing the agent's statuses and security events to the CSMS, in order,
nothing before that acceptance (B01.FR.08). UpdateFirmware / SignedUpdateFirmware, triggers and
the ManufacturerRootCertificate operations go to the agent (charger_fw/bridge.py); a classic
1.6 UpdateFirmware is answered CALLERROR NotSupported (1.6 security L01.FR.20). Sessions become
TransactionEvents (1.6: Start/StopTransaction), connector changes StatusNotifications. It
reconnects with back-off; runs its own event loop in a thread.
"""

import asyncio
import datetime
import logging
import threading

from ocpp.exceptions import OCPPError
from websockets.asyncio.client import connect

from charger_fw import station16, station201


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


PROTOCOLS = {"2.0.1": ("ocpp2.0.1", station201), "1.6": ("ocpp1.6", station16)}


class _OneLine(logging.Handler):
    """The `ocpp` library logs a CSMS's malformed request with a full traceback (its
    logger.exception); a stack says what it refused in one line."""

    def __init__(self, log):
        logging.Handler.__init__(self, logging.WARNING)
        self.log = log

    def emit(self, record):
        why = record.exc_info[1] if record.exc_info else None
        text = "%s%s" % (record.getMessage()[:160], " (%s)" % str(why)[:200] if why else "")
        self.log("OCPP library %s: %s" % (record.levelname.lower(), text))


class OcppClient:
    def __init__(
        self,
        url,
        station_id,
        model,
        firmware_version,
        log,
        protocol="2.0.1",
        bridge=None,
        variables=None,
    ):
        self.url = url.rstrip("/") + "/" + station_id
        self.station_id = station_id
        self.model, self.firmware_version = model, firmware_version
        self.log = log
        self.subprotocol, self.messages = PROTOCOLS[protocol]
        self.bridge = bridge
        # Device-model variables a CSMS may set (2.0.1 SetVariables), passed with each update.
        self.variables = dict(variables or {})
        self.loop = asyncio.new_event_loop()
        self.cp = None
        self.connector = "Available"
        self.tx_ids = {}  # the stack's session id -> the CSMS's transaction id (1.6)
        self.seq = 0

    def start(self):
        library = logging.getLogger("ocpp")
        library.addHandler(_OneLine(self.log))
        library.propagate = False
        threading.Thread(
            target=self.loop.run_until_complete, args=(self._run(),), name="ocpp", daemon=True
        ).start()
        return self

    async def _run(self):
        delay = 0.5
        reason = "PowerUp"
        if self.bridge is not None:
            told = await self.loop.run_in_executor(None, self.bridge.boot_reason)
            reason = told or "PowerUp"
        while True:
            try:
                async with connect(self.url, subprotocols=[self.subprotocol], open_timeout=5) as ws:
                    await self._session(ws, reason)
            except Exception as e:  # CSMS away or link down: try again later
                self.cp = None
                self.log("OCPP: no CSMS (%s); retrying in %.1fs" % (e.__class__.__name__, delay))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)

    async def _session(self, ws, reason):
        cp = self.messages.Station(self.station_id, ws, self)
        reader = asyncio.ensure_future(cp.start())
        boot = await cp.call(self.messages.boot(self, reason))
        status = str(getattr(boot.status, "value", boot.status))
        self.log("OCPP %s: BootNotification (%s) %s" % (self.subprotocol, reason, status))
        if status != "Accepted":
            await asyncio.sleep(min(boot.interval or 5, 5))
            raise ConnectionError("BootNotification %s" % status)  # boot again
        self.cp = cp
        pump = None
        if self.bridge is not None:
            await self.loop.run_in_executor(
                None,
                lambda: self.bridge.safe(
                    "boot_notification",
                    status=status,
                    interval=boot.interval,
                    csms_time=boot.current_time,
                ),
            )
            pump = asyncio.ensure_future(self._pump(cp))
        await cp.call(self.messages.connector(self.connector))
        try:
            # A heartbeat every period; a link lost in between ends the session at once.
            while not (await asyncio.wait({reader}, timeout=min(boot.interval, 30)))[0]:
                await cp.call(self.messages.heartbeat())
            reader.result()  # the link's end, raised: logged and reconnected by _run
        finally:
            if pump is not None:
                pump.cancel()
            if not reader.done():
                reader.cancel()

    async def _pump(self, cp):
        """The agent's outbox to the CSMS, in order; acknowledged once the CSMS answered."""
        while True:
            events = await self.loop.run_in_executor(None, self.bridge.events, 5.0)
            for entry in events:
                message = self.messages.outbox_message(entry)
                try:
                    await cp.call(message, suppress=False)
                    error = None
                except OCPPError as e:  # an old CSMS's CALLERROR: delivered, logged, moved on
                    error = "%s: %s" % (type(e).__name__, e)
                except asyncio.TimeoutError:
                    break  # not answered: sent again on the next round
                await self.loop.run_in_executor(None, self.bridge.ack, entry["seq"], error)

    # -- called from the charging stack's threads ---------------------------------------------

    def _send(self, message):
        cp = self.cp
        if cp is None:
            return None
        return asyncio.run_coroutine_threadsafe(cp.call(message), self.loop)

    def transaction(self, event_type, tx_id, id_tag, energy_wh):
        """Report a session Started/Ended; dropped (logged) while the CSMS is unreachable."""
        if self.cp is None:
            self.log("OCPP: transaction %s %s not sent (no CSMS)" % (tx_id, event_type))
            return
        self.seq += 1
        asyncio.run_coroutine_threadsafe(
            self.messages.transaction(self, event_type, tx_id, id_tag, energy_wh), self.loop
        )

    def connector_changed(self, status):
        """The connector is now Available, Occupied or Unavailable."""
        self.connector = status
        self._send(self.messages.connector(status))

    @staticmethod
    def now():
        return _now()
