"""OCPP 1.6J messages and CSMS requests of the virtual board's charging stack, with the
security whitepaper's firmware and certificate messages."""

import asyncio

from ocpp.exceptions import NotSupportedError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result

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

    @on("SignedUpdateFirmware")
    async def on_signed_update_firmware(
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
            "allow_new_sessions": self.client.variables.get("allow_new_sessions", False),
        }
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
            last = await self._agent("trigger_status", {"status": "Idle", "request_id": None})
            await self.call(
                call.SignedFirmwareStatusNotification(
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
    async def on_get_installed_certificate_ids(self, certificate_type, **kw):
        reply = await self._agent(
            "get_installed_certificate_ids",
            {"status": "NotFound"},
            certificate_type=[certificate_type],
        )
        return call_result.GetInstalledCertificateIds(
            status=reply["status"], certificate_hash_data=reply.get("certificate_hash_data") or None
        )
