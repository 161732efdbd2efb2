"""The trial checks that make sense on a MicroPython charger: the MQTT round trip to the
backend, a charging session and the alarm profile through the charging firmware's callback
object (the `stack`: session_active(), alarms(), request(cmd, **fields), as on Linux).

Invariant: a check answers (passed, evidence) and never raises; it waits only by polling the
channel, so MQTT stays alive while it runs.
"""

import time

from agent.core.trial import compare

CHECKS = ("communication", "charging-session", "alarms")


class Context:
    def __init__(self, options, channel, stack, baseline, wait):
        self.options = options  # the [trial] table
        self.channel = channel
        self.stack = stack
        self.baseline = baseline or {}
        self.wait = wait  # wait(seconds): polls MQTT meanwhile


def profile(alarms, since, until):
    recent = [a for a in alarms if since <= a.get("ts", 0) < until]
    hours = max(until - since, 1.0) / 3600.0
    codes = sorted(set(a.get("code", "?") for a in recent))
    return {"codes": codes, "rate_per_hour": len(recent) / hours, "count": len(recent)}


def communication(ctx):
    timeout = float(ctx.options.get("communication", {}).get("timeout_s", 10))
    if not ctx.channel.connected:
        ctx.wait(min(timeout, 5))  # the link may be coming up right after boot
    if not ctx.channel.connected:
        return False, {"mqtt": {"problem": "broker link down: %s" % ctx.channel.last_error}}
    rtt = ctx.channel.ping(timeout, ctx.wait)
    if rtt is None:
        return False, {"mqtt": {"problem": "backend did not answer ping within %ss" % timeout}}
    return True, {"mqtt": rtt}


def charging_session(ctx):
    opts = ctx.options.get("charging-session", {})
    id_tag = opts.get("id_tag", "UPDATE-SELFTEST")
    evidence = {"id_tag": id_tag}
    for cmd in ("authorize", "start"):
        reply = ctx.stack.request(cmd, id_tag=id_tag)
        if not reply.get("ok"):
            evidence["problem"] = "%s refused: %s" % (cmd, reply.get("reason"))
            return False, evidence
    energy = 0
    for _ in range(int(opts.get("meter_steps", 3))):
        energy = ctx.stack.request("meter").get("energy_wh", energy)
    reply = ctx.stack.request("stop")
    evidence["energy_wh"] = reply.get("energy_wh", energy)
    if not reply.get("ok") or evidence["energy_wh"] <= 0:
        evidence["problem"] = "session delivered no energy or did not stop"
        return False, evidence
    return True, evidence


def alarms(ctx):
    opts = ctx.options.get("alarms", {})
    start = time.time()
    ctx.wait(float(opts.get("observe_s", 5)))
    observed = profile(ctx.stack.alarms(), start, time.time())
    finding = compare(ctx.baseline, observed, float(opts.get("factor", 2.0)),
                      float(opts.get("slack_per_hour", 1.0)))  # fmt: skip
    evidence = {"baseline": ctx.baseline, "observed": observed}
    if finding:
        evidence["problem"] = finding["evidence"]
        return False, evidence
    return True, evidence


FUNCTIONS = {"communication": communication, "charging-session": charging_session,
             "alarms": alarms}  # fmt: skip


def run(names, ctx, reported):
    """{name: (passed, evidence)}; reported(name, passed, evidence) after each check."""
    results = {}
    for name in names:
        fn = FUNCTIONS.get(name)
        try:
            if fn is None:
                result = (False, {"problem": "no such check on this board: %s" % name})
            else:
                result = fn(ctx)
        except Exception as e:  # an OEM stack's bug fails the check, not the agent
            result = (False, {"problem": "check crashed: %r" % e})
        results[name] = result
        reported(name, result[0], result[1])
    return results


def baseline(stack, window_s=24 * 3600):
    now = time.time()
    return profile(stack.alarms(), now - window_s, now + 1)
