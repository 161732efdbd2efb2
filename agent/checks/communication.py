"""Communication path: the MQTT backend answers a round trip, and (if configured) the OCPP
CSMS accepts a BootNotification with reason FirmwareUpdate and answers a Heartbeat."""

from agent.checks import CheckFailed
from agent.core.errors import UpdateError


class Communication:
    name = "communication"

    def run(self, ctx):
        opts = ctx.options("communication")
        timeout = float(opts.get("timeout_s", 10))
        evidence = {}
        try:
            evidence["mqtt"] = ctx.channel.ping_backend(timeout)
        except UpdateError as e:
            raise CheckFailed("MQTT backend did not answer a ping: %s" % e.message) from None
        ocpp = ctx.cfg.section("ocpp")
        if ocpp.get("url"):
            from agent.ocpp_probe import probe

            try:
                evidence["ocpp"] = probe(
                    ocpp["url"], ocpp.get("charge_point_id", ctx.cfg.device["id"]), timeout
                )
            except UpdateError as e:
                raise CheckFailed(
                    "OCPP CSMS check failed: %s" % e.message, getattr(e, "evidence", {})
                ) from None
        return evidence
