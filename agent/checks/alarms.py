"""Alarm profile: after an observation interval, no fault code the pre-update baseline did not
have, no fault rate above it (agent.core.trial.compare decides), and no crash loop of the
agent itself (agent.core.trial.crash_loop)."""

from agent.checks import CheckFailed
from agent.core.trial import compare, crash_loop


def profile(alarms, since, until):
    """{"codes", "rate_per_hour"} of the alarms raised in [since, until)."""
    recent = [a for a in alarms if since <= a.get("ts", 0) < until]
    hours = max(until - since, 1.0) / 3600.0
    codes = sorted(set(a.get("code", "?") for a in recent))
    return {"codes": codes, "rate_per_hour": len(recent) / hours, "count": len(recent)}


class Alarms:
    name = "alarms"

    def run(self, ctx):
        opts = ctx.options("alarms")
        loop = crash_loop(1, ctx.restarts, max_restarts=int(opts.get("max_restarts", 2)))
        if loop:
            raise CheckFailed(loop, {"agent_restarts": ctx.restarts})
        observe_s = float(opts.get("observe_s", 5))
        start = ctx.clock()
        if not ctx.wait(observe_s):
            raise CheckFailed("agent stopping during alarm observation")
        observed = profile(ctx.stack.alarms(), start, ctx.clock())
        finding = compare(
            ctx.baseline, observed,
            float(opts.get("factor", 2.0)), float(opts.get("slack_per_hour", 1.0)),
        )  # fmt: skip
        evidence = {"baseline": ctx.baseline, "observed": observed}
        if finding:
            raise CheckFailed(finding["evidence"], evidence)
        return evidence


def baseline(stack, clock, window_s=24 * 3600):
    """The alarm profile of the last day before installing (what the trial compares with)."""
    now = clock()
    return profile(stack.alarms(), now - window_s, now + 1)
