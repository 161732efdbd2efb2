"""What the 1.6-security and 2.0.1 stations share: the bridge to the agent, the firmware
request both versions carry, the certificate handlers and the triggered firmware status.
Each Station mixes this in before its version's ChargePoint and names that version's
`call` and `call_result` modules as `messages` and `results` (ChargePoint.call is taken);
ocpp.routing finds the @on handlers through dir()."""

import asyncio

from ocpp.routing import on


class AgentBridge:
    messages = results = None  # the OCPP version's `call` and `call_result` modules
    STATUS_CALL = ""  # the firmware status notification this version sends

    def __init__(self, station_id, ws, client):
        super().__init__(station_id, ws)
        self.client = client

    async def _agent(self, op, default=None, **fields):
        bridge = self.client.bridge
        if bridge is None:
            return default
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: bridge.safe(op, default, **fields))

    @staticmethod
    def firmware_request(request_id, firmware, retries, retry_interval):
        """The agent's update_firmware fields from the firmware block both versions share."""
        return {
            "request_id": request_id,
            "location": firmware.get("location"),
            "retrieve_at": firmware.get("retrieve_date_time"),
            "install_at": firmware.get("install_date_time"),
            "signing_certificate": firmware.get("signing_certificate"),
            "signature": firmware.get("signature"),
            "retries": retries,
            "retry_interval_s": retry_interval,
        }

    async def send_firmware_status(self):
        """The agent's last firmware status, as a triggered notification."""
        last = await self._agent("trigger_status", {"status": "Idle", "request_id": None})
        message = getattr(self.messages, self.STATUS_CALL)
        await self.call(message(status=last["status"], request_id=last.get("request_id")))

    @on("InstallCertificate")
    async def on_install_certificate(self, certificate_type, certificate, **kw):
        reply = await self._agent(
            "install_certificate",
            {"status": "Failed"},
            certificate_type=certificate_type,
            certificate=certificate,
        )
        return self.results.InstallCertificate(status=reply["status"])

    @on("DeleteCertificate")
    async def on_delete_certificate(self, certificate_hash_data, **kw):
        reply = await self._agent(
            "delete_certificate", {"status": "Failed"}, certificate_hash_data=certificate_hash_data
        )
        return self.results.DeleteCertificate(status=reply["status"])
