"""The OCPP path of the communication check: can this charger still talk to its CSMS?

Invariant: the probe passes only if, within `timeout` seconds, a WebSocket with subprotocol
ocpp2.0.1 opened, a BootNotification (reason FirmwareUpdate) was answered Accepted, and a
Heartbeat was answered. Every other outcome raises OcppProbeError with a reason from REASONS
and the evidence gathered so far; nothing from `ocpp`/`websockets` escapes this module.
"""

import asyncio
import base64
import logging
import threading
import time

import websockets
from ocpp.exceptions import OCPPError
from ocpp.v201 import ChargePoint, call
from websockets.asyncio.client import connect

from agent.core.errors import ConfigError, NetworkError

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp2.0.1"
REFUSED = "refused"  # no connection, handshake refused, or subprotocol not agreed
TIMEOUT = "timeout"  # connected, but an answer did not come in time
REJECTED = "rejected"  # BootNotification answered, but not Accepted
PROTOCOL_ERROR = "protocol-error"  # CALLERROR or a reply that breaks the schema
REASONS = (REFUSED, TIMEOUT, REJECTED, PROTOCOL_ERROR)


class OcppProbeError(NetworkError):
    """The CSMS path failed. `ocpp_reason` is one of REASONS; `evidence` says how far it got."""

    reason = "ocpp"

    def __init__(self, ocpp_reason, message, evidence):
        NetworkError.__init__(self, "OCPP probe %s: %s" % (ocpp_reason, message))
        self.ocpp_reason = ocpp_reason
        self.evidence = dict(evidence, ok=False, failure=ocpp_reason, detail=message)


async def probe_async(
    url,
    charge_point_id,
    timeout,
    model="charger",
    vendor_name="charger",
    firmware_version=None,
    password=None,
    ssl_context=None,
    clock=time.monotonic,
):
    """Run the probe on the current event loop; returns the evidence dict on success."""
    started = clock()
    evidence = {"url": url, "charge_point_id": charge_point_id, "subprotocol": None}
    try:
        await asyncio.wait_for(
            _exchange(
                evidence,
                url,
                charge_point_id,
                timeout,
                model,
                vendor_name,
                firmware_version,
                password,
                ssl_context,
            ),
            timeout,
        )
    except OcppProbeError:
        raise
    except asyncio.TimeoutError:
        step = "heartbeat" if "boot_status" in evidence else "boot"
        if evidence["subprotocol"] is None:
            step = "connect"
        raise OcppProbeError(
            TIMEOUT, "no answer to %s within %ss" % (step, timeout), evidence
        ) from None
    except (OSError, websockets.exceptions.WebSocketException) as exc:
        raise OcppProbeError(REFUSED, "%s: %s" % (type(exc).__name__, exc), evidence) from None
    except OCPPError as exc:
        raise OcppProbeError(
            PROTOCOL_ERROR, "%s: %s" % (type(exc).__name__, exc), evidence
        ) from None
    evidence["elapsed_s"] = round(clock() - started, 4)
    evidence["ok"] = True
    return evidence


async def _exchange(evidence, url, cp_id, timeout, model, vendor, firmware, password, ssl_ctx):
    headers = {}
    if password:  # OCPP security profiles 1/2: HTTP Basic with the charge point id
        token = base64.b64encode(("%s:%s" % (cp_id, password)).encode()).decode()
        headers["Authorization"] = "Basic " + token
    full_url = "%s/%s" % (url.rstrip("/"), cp_id)
    async with connect(
        full_url,
        subprotocols=[SUBPROTOCOL],
        additional_headers=headers,
        open_timeout=timeout,
        ssl=ssl_ctx,
    ) as ws:
        evidence["subprotocol"] = ws.subprotocol
        if ws.subprotocol != SUBPROTOCOL:
            raise OcppProbeError(
                REFUSED,
                "CSMS did not agree to subprotocol %s (got %r)" % (SUBPROTOCOL, ws.subprotocol),
                evidence,
            )
        cp = ChargePoint(cp_id, ws, response_timeout=timeout)
        reader = asyncio.ensure_future(cp.start())
        try:
            await _boot_and_heartbeat(cp, evidence, model, vendor, firmware)
        finally:
            reader.cancel()
            try:
                await reader
            except BaseException:  # the reader ends by cancellation or a closed socket
                pass


async def _boot_and_heartbeat(cp, evidence, model, vendor, firmware):
    station = {"model": model, "vendor_name": vendor}
    if firmware:
        station["firmware_version"] = firmware
    boot = await cp.call(
        call.BootNotification(charging_station=station, reason="FirmwareUpdate"), suppress=False
    )
    status = str(getattr(boot.status, "value", boot.status))
    evidence.update(boot_status=status, interval=boot.interval, csms_time=boot.current_time)
    if status != "Accepted":
        raise OcppProbeError(REJECTED, "BootNotification answered %s" % status, evidence)
    beat = await cp.call(call.Heartbeat(), suppress=False)
    evidence["heartbeat_time"] = beat.current_time


def probe_args_from_config(config):
    """[ocpp] of the agent's Config -> keyword arguments for probe(); None when the charger
    has no CSMS configured (the OCPP half of the comm check is then skipped).
    Keys: url (ws:// or wss:// base, required), charge_point_id (default: [device] id),
    timeout_s (default 10), password (OCPP basic auth, optional)."""
    section = config.section("ocpp")
    if not section:
        return None
    url = section.get("url", "")
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(
            "%s: [ocpp] url must start with ws:// or wss://, got %r" % (config.path, url),
            hint='e.g. url = "wss://csms.example.com/ocpp"',
        )
    return {
        "url": url,
        "charge_point_id": section.get("charge_point_id") or config.device["id"],
        "timeout": float(section.get("timeout_s", 10.0)),
        "password": section.get("password") or None,
        "model": config.device.get("model", "charger"),
        "vendor_name": config.device.get("vendor", "charger"),
    }


def probe(url, charge_point_id, timeout=10.0, **kw):
    """Blocking probe for the daemon: runs on a private event loop in its own thread, so it
    works whether or not the caller's thread already runs a loop. Same result as
    probe_async: the evidence dict, or OcppProbeError."""
    outcome = {}

    def run():
        try:
            outcome["value"] = asyncio.run(probe_async(url, charge_point_id, timeout, **kw))
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="ocpp-probe", daemon=True)
    worker.start()
    worker.join(timeout + 5.0)  # the probe bounds itself; the margin covers loop shutdown
    if worker.is_alive():
        evidence = {"url": url, "charge_point_id": charge_point_id}
        raise OcppProbeError(TIMEOUT, "probe did not finish within %ss" % timeout, evidence)
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, OcppProbeError):
            raise error
        evidence = {"url": url, "charge_point_id": charge_point_id}
        raise OcppProbeError(PROTOCOL_ERROR, "%s: %s" % (type(error).__name__, error), evidence)
    return outcome["value"]
