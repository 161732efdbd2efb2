"""What the operator's update matrix needs to remember across reboots: the status sequence
number, the last job and its result, and the rollback history (bounded).

Invariant: the sequence number never repeats, even across power cuts (it is saved before a
status carrying it is published), so a backend can order and de-duplicate statuses.
"""

import os

from agent.atomic import read_json, write_json_atomic

FILE = "history.json"
MAX_ROLLBACKS = 20


class History:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILE)

    def _load(self):
        data = read_json(self.path, default=None) or {}
        data.setdefault("seq", 0)
        data.setdefault("last_job", None)
        data.setdefault("rollbacks", [])
        return data

    def _save(self, data):
        os.makedirs(self.state_dir, exist_ok=True)
        write_json_atomic(self.path, data)

    def next_seq(self):
        data = self._load()
        data["seq"] += 1
        self._save(data)
        return data["seq"]

    def record_result(self, job_id, status, info):
        data = self._load()
        data["last_job"] = {
            "id": job_id, "version": info.get("version"), "result": status,
            "reason": info.get("reason"), "check": info.get("check"),
        }  # fmt: skip
        if status == "RolledBack":
            data["rollbacks"] = (data["rollbacks"] + [dict(data["last_job"])])[-MAX_ROLLBACKS:]
        self._save(data)

    def last_job(self):
        return self._load()["last_job"]

    def rollbacks(self):
        return self._load()["rollbacks"]
