"""The front-ends next to MQTT that feed the daemon (EVerest, the local socket API), as one
group: started and stopped with the daemon, told every status, asked before a reboot whether
the stack still has to confirm something.

Invariant: a front-end's failure never reaches the daemon's loop (it is logged), and the wait
before a reboot is bounded by the largest `reboot_grace_s` of the front-ends, with the
watchdog petted throughout. A front-end is any object with start(daemon), stop(),
status(status, info), pending() -> bool and reboot_grace_s; one that owns the CSMS link
also has reports_boot = True and boot_accepted(timeout) (the trial's communication check).
"""

import json
import logging

from agent.core import lifecycle as lc

log = logging.getLogger("charger-update")

# Journal states at start-up that mean the agent itself rebooted the board for an update.
REBOOTED_FOR_UPDATE = (lc.REBOOTING, lc.TRIAL, lc.ROLLED_BACK)


class Frontends:
    def __init__(self, frontends=()):
        self.items = list(frontends)

    def __iter__(self):
        return iter(self.items)

    def start(self, daemon):
        for frontend in self.items:
            frontend.start(daemon)

    def stop(self):
        for frontend in self.items:
            try:
                frontend.stop()
            except Exception:
                log.exception("front-end %s did not stop cleanly", frontend)

    def status(self, status, info):
        for frontend in self.items:
            try:
                frontend.status(status, dict(info))
            except Exception:  # a front-end's bug must not stop the update
                log.exception("front-end %s failed on status %s", frontend, status)

    def csms_links(self):
        """The front-ends that can tell whether the CSMS accepted this boot (EVerest only
        with an ocpp_consumer_API module to hear it from)."""
        return [frontend for frontend in self.items if getattr(frontend, "reports_boot", False)]

    def pending(self):
        return any(frontend.pending() for frontend in self.items)

    def await_delivery(self, clock, pet, stopping, limit=None):
        """Before a reboot: let the stack confirm what was reported (InstallRebooting reaching
        the CSMS), for at most the largest reboot_grace_s (and `limit`); True when nothing is
        pending."""
        grace = max([frontend.reboot_grace_s for frontend in self.items] or [0])
        if limit is not None:
            grace = min(grace, limit)
        deadline = clock() + grace
        while clock() < deadline and not stopping.is_set():
            if not self.pending():
                return True
            pet()
            stopping.wait(0.05)
        if self.pending():
            log.warning("going on with statuses the stack has not confirmed within %ss", grace)
            return False
        return True


def boot_reason(journal_path):
    """FirmwareUpdate when the journal this boot starts with says the agent rebooted the
    board for an update (REBOOTING, TRIAL, ROLLED_BACK), else None (not ours to say)."""
    try:
        with open(journal_path, "rb") as f:
            state = json.loads(f.read(1 << 20)).get("state")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return "FirmwareUpdate" if state in REBOOTED_FOR_UPDATE else None
