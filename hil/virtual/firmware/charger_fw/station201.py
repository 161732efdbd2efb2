"""OCPP 2.0.1 messages and CSMS requests of the virtual board's charging stack."""

import asyncio

from ocpp.routing import after, on
from ocpp.v201 import ChargePoint, call, call_result

TRIGGERABLE = ("FirmwareStatusNotification",)
VARIABLES = {  # (component, variable) -> key passed to the agent with each update
    ("ChargingStation", "AllowNewSessionsPendingFirmwareUpdate"): "allow_new_sessions",
    # EVerest's opt-in (everest-core #2480): no download while a transaction runs.
    (
        "InternalCtrlr",
        "DeferFirmwareDownloadDuringTransaction",
    ): "defer_download_during_transaction",
}


def boot(client, reason):
    station = {
        "model": client.model,
        "vendor_name": "charger-fw",
        "firmware_version": client.firmware_version,
    }
    return call.BootNotification(charging_station=station, reason=reason)


def heartbeat():
    return call.Heartbeat()


def connector(status):
    return call.StatusNotification(
        timestamp=_now(), connector_status=status, evse_id=1, connector_id=1
    )


async def transaction(client, event_type, tx_id, id_tag, energy_wh):
    message = call.TransactionEvent(
        event_type=event_type,
        timestamp=_now(),
        trigger_reason="Authorized" if event_type == "Started" else "StopAuthorized",
        seq_no=client.seq,
        transaction_info={"transaction_id": tx_id},
        id_token={"id_token": id_tag, "type": "Central"},
        meter_value=[{"timestamp": _now(), "sampled_value": [{"value": energy_wh}]}],
    )
    await client.cp.call(message)


def outbox_message(entry):
    if entry["type"] == "status":
        return call.FirmwareStatusNotification(
            status=entry["status"], request_id=entry.get("request_id")
        )
    return call.SecurityEventNotification(
        type=entry["event"], timestamp=entry["timestamp"], tech_info=entry.get("tech_info") or None
    )


def _now():
    from charger_fw.ocpp_client import _now as now

    return now()


class Station(ChargePoint):
    def __init__(self, station_id, ws, client):
        ChargePoint.__init__(self, station_id, ws)
        self.client = client

    async def _agent(self, op, default=None, **fields):
        bridge = self.client.bridge
        if bridge is None:
            return default
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: bridge.safe(op, default, **fields))

    @on("UpdateFirmware")
    async def on_update_firmware(
        self, request_id, firmware, retries=None, retry_interval=None, **kw
    ):
        request = {
            "request_id": request_id,
            "location": firmware.get("location"),
            "retrieve_at": firmware.get("retrieve_date_time"),
            "install_at": firmware.get("install_date_time"),
            "signing_certificate": firmware.get("signing_certificate"),
            "signature": firmware.get("signature"),
            "retries": retries,
            "retry_interval_s": retry_interval,
        }
        for key in VARIABLES.values():
            request[key] = self.client.variables.get(key, False)
        reply = await self._agent("update_firmware", {"status": "Rejected"}, **request)
        return call_result.UpdateFirmware(status=reply["status"])

    @on("TriggerMessage")
    async def on_trigger(self, requested_message, **kw):
        status = "Accepted" if requested_message in TRIGGERABLE else "NotImplemented"
        return call_result.TriggerMessage(status=status)

    @after("TriggerMessage")
    async def after_trigger(self, requested_message, **kw):
        if requested_message == "FirmwareStatusNotification":
            last = await self._agent("trigger_status", {"status": "Idle", "request_id": None})
            await self.call(
                call.FirmwareStatusNotification(
                    status=last["status"], request_id=last.get("request_id")
                )
            )

    @on("InstallCertificate")
    async def on_install_certificate(self, certificate_type, certificate, **kw):
        reply = await self._agent(
            "install_certificate",
            {"status": "Failed"},
            certificate_type=certificate_type,
            certificate=certificate,
        )
        return call_result.InstallCertificate(status=reply["status"])

    @on("DeleteCertificate")
    async def on_delete_certificate(self, certificate_hash_data, **kw):
        reply = await self._agent(
            "delete_certificate", {"status": "Failed"}, certificate_hash_data=certificate_hash_data
        )
        return call_result.DeleteCertificate(status=reply["status"])

    @on("GetInstalledCertificateIds")
    async def on_get_installed_certificate_ids(self, certificate_type=None, **kw):
        reply = await self._agent(
            "get_installed_certificate_ids",
            {"status": "NotFound"},
            certificate_type=certificate_type,
        )
        chain = [
            {"certificate_type": "ManufacturerRootCertificate", "certificate_hash_data": h}
            for h in reply.get("certificate_hash_data") or []
        ]
        return call_result.GetInstalledCertificateIds(
            status=reply["status"], certificate_hash_data_chain=chain or None
        )

    @on("SetVariables")
    async def on_set_variables(self, set_variable_data, **kw):
        results = []
        for item in set_variable_data:
            key = VARIABLES.get((item["component"]["name"], item["variable"]["name"]))
            status = "UnknownVariable"
            if key is not None:
                self.client.variables[key] = str(item["attribute_value"]).lower() == "true"
                status = "Accepted"
            results.append(
                {
                    "attribute_status": status,
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return call_result.SetVariables(set_variable_result=results)
