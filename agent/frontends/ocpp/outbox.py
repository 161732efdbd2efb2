"""What the stack must send to the CSMS for us, durable and in order, across reboots and
CSMS outages: FirmwareStatusNotifications and SecurityEventNotifications.

Invariant: an entry leaves the outbox only when the stack acknowledged it (the CSMS answered,
with a result or a CALLERROR: both end its delivery), and entries are handed out oldest
first, each with a sequence number that never repeats. Every change is written atomically
before it is visible, so a power cut loses nothing that was put in. The same file keeps the
OCPP request record of each job (request id, retrieve/install times), so statuses after a
reboot still carry their requestId. Bounded: past `limit` entries the oldest status goes;
security events are kept (A04.FR.02: guaranteed delivery).
"""

import logging
import os
import threading

from agent.state.atomic import read_json, write_json_atomic

log = logging.getLogger("charger-update")
FORMAT = 1
MAX_REQUESTS = 16


class Outbox:
    def __init__(self, path, limit=500):
        self.path = path
        self.limit = limit
        self.cond = threading.Condition()
        self.data = self._load()

    def _load(self):
        empty = {"format": FORMAT, "next_seq": 1, "entries": [], "requests": {}, "last": None}
        try:
            data = read_json(self.path)
        except (OSError, ValueError) as e:
            log.error("OCPP outbox %s unreadable (%s); starting empty", self.path, e)
            try:
                os.replace(self.path, self.path + ".corrupt")
            except OSError:
                pass
            return empty
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return empty
        for key in empty:
            data.setdefault(key, empty[key])
        return data

    def _save(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        write_json_atomic(self.path, self.data)

    # -- requests ----------------------------------------------------------------------------

    def remember(self, job_id, record):
        """Keep the OCPP request behind `job_id` (saved before the stack answers)."""
        with self.cond:
            requests = self.data["requests"]
            requests[job_id] = dict(record, order=self.data["next_seq"])
            while len(requests) > MAX_REQUESTS:
                oldest = min(requests, key=lambda k: requests[k].get("order", 0))
                del requests[oldest]
            self._save()

    def forget(self, job_id):
        with self.cond:
            if self.data["requests"].pop(job_id, None) is not None:
                self._save()

    def request(self, job_id):
        with self.cond:
            return self.data["requests"].get(job_id)

    # -- entries -----------------------------------------------------------------------------

    def put(self, messages):
        """Append [{"type": "status", "status", "request_id"} | {"type": "security_event",
        "event", "tech_info", "timestamp"}] atomically; a status equal to the last one put for
        the same request is dropped (Installing progress, a repeated report)."""
        with self.cond:
            added = False
            for message in messages:
                if message["type"] == "status":
                    last = self.data["last"]
                    current = {"status": message["status"], "request_id": message["request_id"]}
                    if last == current:
                        continue
                    self.data["last"] = current
                entry = dict(message, seq=self.data["next_seq"])
                self.data["next_seq"] += 1
                self.data["entries"].append(entry)
                added = True
            if not added:
                return
            self._trim()
            self._save()
            self.cond.notify_all()

    def _trim(self):
        entries = self.data["entries"]
        while len(entries) > self.limit:
            statuses = [e for e in entries if e["type"] == "status"]
            victim = statuses[0] if statuses else entries[0]
            log.warning("OCPP outbox full: dropping %s", victim)
            entries.remove(victim)

    def pending(self):
        with self.cond:
            return list(self.data["entries"])

    def wait(self, timeout):
        """The pending entries, waiting up to `timeout` s for one when there is none."""
        with self.cond:
            self.cond.wait_for(lambda: self.data["entries"], timeout)
            return list(self.data["entries"])

    def ack(self, seq, error=None):
        """The stack delivered entry `seq` (and everything before it); `error`: the CSMS
        answered with a CALLERROR, which is logged and ends the delivery all the same."""
        with self.cond:
            entries = self.data["entries"]
            done = [e for e in entries if e["seq"] <= seq]
            if not done:
                return False
            if error:
                log.warning("CSMS refused %s: %s (not retried)", done[-1], error)
            self.data["entries"] = [e for e in entries if e["seq"] > seq]
            self._save()
            self.cond.notify_all()
            return True

    def last_status(self):
        with self.cond:
            return self.data["last"]
