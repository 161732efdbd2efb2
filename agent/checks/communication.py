"""Communication path: the MQTT backend answers a round trip, and the CSMS accepted this boot.

The CSMS half comes, in this order of preference (`[trial.communication] ocpp = "auto"`):
from the stack that owns the OCPP connection, through its front-end ("BootNotification
accepted after this boot", agent/frontends/ocpp), or from the agent's own probe (a second
OCPP connection: BootNotification with reason FirmwareUpdate and a Heartbeat), for stations
whose CSMS allows one. "stack", "probe" or "off" pick one; `mqtt = false` skips the MQTT half
(a charger driven only by OCPP).

A backend that is briefly away (broker restart, mobile link flapping) is not the new
firmware's fault: each probe is retried until `retry_for_s` (default: half the trial window)
has passed, and fails the check only when the path stays broken that long.
"""

import logging

from agent.checks import CheckFailed
from agent.core.errors import UpdateError

log = logging.getLogger("charger-update")


class Communication:
    name = "communication"

    def run(self, ctx):
        opts = ctx.options("communication")
        timeout = float(opts.get("timeout_s", 5))
        window = float(ctx.cfg.section("trial").get("window_s", 600))
        deadline = ctx.clock() + float(opts.get("retry_for_s", window / 2))
        evidence = {}
        if opts.get("mqtt", True):
            ping = lambda: ctx.channel.ping_backend(timeout)  # noqa: E731
            evidence["mqtt"] = retry(ctx, deadline, "MQTT backend", ping)
        how = opts.get("ocpp", "auto")
        links = getattr(ctx, "csms_links", [])
        if how == "stack" or (how == "auto" and links):
            if not links:
                raise CheckFailed("[trial.communication] ocpp = \"stack\" but no front-end "
                                  "reports the stack's BootNotification")  # fmt: skip
            evidence["ocpp"] = retry(ctx, deadline, "CSMS (through the stack)",
                                     lambda: links[0].boot_accepted(timeout))  # fmt: skip
        elif how in ("probe", "auto"):
            from agent.station.ocpp_probe import probe, probe_args_from_config

            args = probe_args_from_config(ctx.cfg)  # None: no CSMS configured, skip that half
            if args is not None:
                args["timeout"] = timeout  # the check's per-probe bound
                evidence["ocpp"] = retry(ctx, deadline, "OCPP CSMS", lambda: probe(**args))
        return evidence


def retry(ctx, deadline, what, attempt):
    """attempt() until it succeeds or the deadline passes; back-off 0.5 s doubling to 8 s."""
    delay, tries = 0.5, 0
    while True:
        tries += 1
        try:
            return attempt()
        except UpdateError as e:
            if ctx.clock() + delay >= deadline:
                raise CheckFailed(
                    "%s unreachable after %d tries: %s" % (what, tries, e.message),
                    getattr(e, "evidence", None),
                ) from None
            log.warning("%s unreachable (%s); retrying in %.1fs", what, e.message, delay)
        if not ctx.wait(delay):
            raise CheckFailed("agent stopping while probing %s" % what)
        delay = min(delay * 2, 8.0)
