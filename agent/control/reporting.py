"""What the charger tells its backend: statuses, health results, the inventory row.

Invariant: publishing never raises into the daemon: a broker that is away only costs a log
line (QoS 1 messages are queued by the channel and the retained inventory is republished
after every change), and every status carries a sequence number that never repeats.
"""

import json
import logging

from agent.core import messages
from agent.core.errors import UpdateError
from agent.frontends import channel as ch

log = logging.getLogger("charger-update")


class Reporter:
    def __init__(self, cfg, channel, boot, history, slots, clock, trust=None):
        self.cfg, self.channel, self.boot = cfg, channel, boot
        self.history, self.slots, self.clock = history, slots, clock
        self.trust = trust

    def _publish(self, suffix, message, retain=False):
        try:
            self.channel.publish(suffix, message, retain=retain)
        except UpdateError as e:
            log.warning("%s not published (%s)", suffix, e)

    def status(self, status, info):
        """Never raises: a report that cannot be made is logged, the update goes on."""
        try:
            with self.history.lock:  # seq order == publish order
                seq = self.history.next_seq()
                message = messages.status_message(status, info, seq, self.clock())
                log.info("status %s %s", status, json.dumps(info, sort_keys=True, default=str))
                self._publish(ch.STATUS, message)
        except Exception:
            log.exception("status %s could not be reported", status)

    def health(self, job_id, slot, phase, results, verdict):
        """One message per trial or observation round (docs/mqtt-api.md, health)."""
        checks = [(n, r[0], r[1]) for n, r in results.items()]
        message = messages.health_message(job_id, slot, phase, checks, verdict, self.clock())
        self._publish(ch.HEALTH, message)

    def inventory(self):
        try:
            row = self.inventory_row()
        except Exception as e:  # a corrupt state file must not take the daemon down
            log.warning("inventory not built: %s", e)
            return
        self._publish(ch.INVENTORY, row, retain=True)

    def components(self, booted, slots):
        """component -> running version: the booted slot's release, each MCU as the agent
        last wrote or confirmed it (None while a write is unfinished)."""
        from agent.state.components import ComponentStore

        store = ComponentStore(self.cfg.state_dir)
        found = dict(store.release(booted)["components"])
        if not found:
            found["rootfs"] = slots.get(booted, {}).get("version")
        for name, record in store.running().items():
            found[name] = record.get("version")
        return found

    def inventory_row(self):
        """The operator's update-matrix row for this charger."""
        boot = self.boot.status()
        slots = self.slots.load()["slots"]
        return messages.inventory_message(
            self.cfg.device, boot, slots, self.history.last_job(), self.history.rollbacks(),
            self.clock(), components=self.components(boot["booted"], slots),
            trust=self.trust_row(),
        )  # fmt: skip

    def trust_row(self):
        """Root in use, newest root seen, anti-rollback floor, and what is wrong (or None)."""
        row = {"security_floor": None}
        try:
            if self.trust is not None:
                row.update(self.trust.status())
            row["security_floor"] = self.slots.security_floor()
        except UpdateError as e:  # a damaged store is itself what the backend must see
            row["problem"] = e.message
        return row
