"""OCPP 2.0.1 messages and CSMS requests of the virtual board's charging stack."""

from ocpp.routing import after, on
from ocpp.v201 import ChargePoint, call, call_result

from charger_fw.station_common import AgentBridge

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


class Station(AgentBridge, ChargePoint):
    messages, results = call, call_result
    STATUS_CALL = "FirmwareStatusNotification"

    @on("UpdateFirmware")
    async def on_update_firmware(
        self, request_id, firmware, retries=None, retry_interval=None, **kw
    ):
        request = self.firmware_request(request_id, firmware, retries, retry_interval)
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
            await self.send_firmware_status()

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
