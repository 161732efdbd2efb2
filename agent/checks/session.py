"""Charging-session path: through the charging-stack adapter a session is authorised,
started, delivers energy and stops. On the virtual board and HIL rigs the stack drives a
simulated EV; an OEM adapter may run its own self-test here instead."""

from agent.checks import CheckFailed


class ChargingSession:
    name = "charging-session"

    def run(self, ctx):
        opts = ctx.options("charging-session")
        id_tag = opts.get("id_tag", "UPDATE-SELFTEST")
        steps = int(opts.get("meter_steps", 3))
        stack = ctx.stack
        evidence = {"id_tag": id_tag}
        for cmd in ("authorize", "start"):
            reply = stack.request(cmd, id_tag=id_tag)
            if not reply.get("ok"):
                raise CheckFailed("%s refused: %s" % (cmd, reply.get("reason")), evidence)
        energy = 0
        try:
            for _ in range(steps):
                reply = stack.request("meter")
                energy = reply.get("energy_wh", 0)
        finally:
            reply = stack.request("stop")  # never leave the test session running
        evidence["energy_wh"] = reply.get("energy_wh", energy)
        if not reply.get("ok"):
            raise CheckFailed("stop refused: %s" % reply.get("reason"), evidence)
        if evidence["energy_wh"] <= 0:
            raise CheckFailed("session delivered no energy", evidence)
        return evidence
