"""What each slot holds, as the agent last wrote it: `state_dir/slots.json`.

Invariant: a slot is recorded with a version only after every payload was written, fsynced
and read back with the signed hash; before the first byte is written the slot's record is
replaced by {"state": "writing"}, so a power cut mid-write can never leave a stale version
that looks installable. The anti-rollback floor (`security_version`) only ever rises.
"""

import os

from agent.core.errors import ConfigError
from agent.state.atomic import read_json, write_json_atomic

FILE = "slots.json"


class SlotState:
    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, FILE)
        self.state_dir = state_dir

    def load(self):
        try:
            data = read_json(self.path, default=None) or {}
        except ValueError:
            raise ConfigError(
                "slot records %s are unreadable" % self.path,
                hint="they hold the anti-rollback floor: restore them, or check the installed "
                "versions and remove the file",
            ) from None
        data.setdefault("slots", {})
        data.setdefault("security_version", 0)
        return data

    def _save(self, data):
        os.makedirs(self.state_dir, exist_ok=True)
        write_json_atomic(self.path, data)

    def slot(self, name):
        return self.load()["slots"].get(name, {})

    def version(self, name):
        return self.slot(name).get("version")

    def security_floor(self):
        return int(self.load()["security_version"])

    def begin_write(self, name, version):
        data = self.load()
        data["slots"][name] = {"state": "writing", "incoming": version}
        self._save(data)

    def installed(self, name, manifest):
        data = self.load()
        data["slots"][name] = {
            "state": "installed",
            "version": manifest.version,
            "security_version": manifest.security_version,
        }
        self._save(data)

    def committed(self, name):
        """The slot passed its trial: its security version becomes the anti-rollback floor."""
        data = self.load()
        record = data["slots"].setdefault(name, {})
        record["state"] = "good"
        floor = max(int(data["security_version"]), int(record.get("security_version", 0)))
        data["security_version"] = floor
        self._save(data)

    def set_good(self, name, version, security_version=0):
        """Record a factory-installed slot (used when provisioning a board)."""
        data = self.load()
        data["slots"][name] = {
            "state": "good",
            "version": version,
            "security_version": security_version,
        }
        data["security_version"] = max(int(data["security_version"]), security_version)
        self._save(data)

    def mark(self, name, state):
        data = self.load()
        data["slots"].setdefault(name, {})["state"] = state
        self._save(data)
