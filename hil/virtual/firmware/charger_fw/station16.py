"""OCPP 1.6J messages and CSMS requests of the virtual board's charging stack, with the
security whitepaper's firmware and certificate messages."""

from ocpp.exceptions import NotSupportedError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result

from charger_fw.station_common import AgentBridge

CONNECTOR = {"Available": "Available", "Occupied": "Charging", "Unavailable": "Unavailable"}


def _now():
    from charger_fw.ocpp_client import _now as now

    return now()


def boot(client, reason):
    # 1.6 has no boot reason; the CSMS learns of a firmware update from FirmwareUpdated.
    return call.BootNotification(
        charge_point_model=client.model,
        charge_point_vendor="charger-fw",
        firmware_version=client.firmware_version,
    )


def heartbeat():
    return call.Heartbeat()


def connector(status):
    return call.StatusNotification(
        connector_id=1, error_code="NoError", status=CONNECTOR.get(status, status), timestamp=_now()
    )


async def transaction(client, event_type, tx_id, id_tag, energy_wh):
    if event_type == "Started":
        reply = await client.cp.call(
            call.StartTransaction(
                connector_id=1, id_tag=id_tag, meter_start=int(energy_wh), timestamp=_now()
            )
        )
        client.tx_ids[tx_id] = reply.transaction_id
        return
    csms_tx = client.tx_ids.pop(tx_id, 0)
    await client.cp.call(
        call.StopTransaction(
            meter_stop=int(energy_wh), timestamp=_now(), transaction_id=csms_tx, id_tag=id_tag
        )
    )


def outbox_message(entry):
    if entry["type"] == "status":
        return call.SignedFirmwareStatusNotification(
            status=entry["status"], request_id=entry.get("request_id")
        )
    return call.SecurityEventNotification(
        type=entry["event"], timestamp=entry["timestamp"], tech_info=entry.get("tech_info") or None
    )


class Station(AgentBridge, ChargePoint):
    messages, results = call, call_result
    STATUS_CALL = "SignedFirmwareStatusNotification"

    @on("SignedUpdateFirmware")
    async def on_signed_update_firmware(
        self, request_id, firmware, retries=None, retry_interval=None, **kw
    ):
        request = self.firmware_request(request_id, firmware, retries, retry_interval)
        request["allow_new_sessions"] = self.client.variables.get("allow_new_sessions", False)
        reply = await self._agent("update_firmware", {"status": "Rejected"}, **request)
        return call_result.SignedUpdateFirmware(status=reply["status"])

    @on("UpdateFirmware")
    async def on_update_firmware(self, location, retrieve_date, **kw):
        # 1.6 security L01.FR.20: a station with secure firmware update refuses the classic one.
        raise NotSupportedError("this charge point takes only SignedUpdateFirmware")

    @on("ExtendedTriggerMessage")
    async def on_extended_trigger(self, requested_message, **kw):
        ok = requested_message == "FirmwareStatusNotification"
        return call_result.ExtendedTriggerMessage(status="Accepted" if ok else "NotImplemented")

    @after("ExtendedTriggerMessage")
    async def after_extended_trigger(self, requested_message, **kw):
        if requested_message == "FirmwareStatusNotification":
            await self.send_firmware_status()

    @on("GetInstalledCertificateIds")
    async def on_get_installed_certificate_ids(self, certificate_type, **kw):
        reply = await self._agent(
            "get_installed_certificate_ids",
            {"status": "NotFound"},
            certificate_type=[certificate_type],
        )
        return call_result.GetInstalledCertificateIds(
            status=reply["status"], certificate_hash_data=reply.get("certificate_hash_data") or None
        )
