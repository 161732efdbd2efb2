"""What each slot holds, as the agent last wrote it: `state_dir/slots.json`.

Invariant: a slot is recorded with a version only after every payload was written, fsynced
and read back with the signed hash; before the first byte is written the slot's record is
replaced by {"state": "writing"}, so a power cut mid-write can never leave a stale version
that looks installable. The anti-rollback floor only ever rises: a commit by any path (a
trial, `boot mark-good`, a healthy boot of a committed slot) raises it here and in the
device's floors (agent/state/floors.py, also kept in the boot environment), and the floor
in force is the higher of the two, so deleting or blanking this file lowers nothing. A file
that is not a well-formed record is refused (ConfigError), never read as empty.
"""

import os

from agent.core.errors import ConfigError
from agent.state import statedir
from agent.state.atomic import read_json, write_json_atomic
from agent.state.floors import Floors

FILE = "slots.json"
MISSING = object()  # no file at all (a JSON null in it is a damaged record)
RECORD_FIELDS = {"state": str, "version": str, "incoming": str, "security_version": int}


def _refuse(path, what):
    return ConfigError(
        "slot records %s %s" % (path, what),
        hint="the data partition was damaged or edited; restore the file from a backup, or "
        "re-provision the board (the anti-rollback floor is also kept in the boot environment)",
    )


def check_record(data, path):
    """The parsed slots.json, if it is a well-formed record; ConfigError otherwise."""
    if not isinstance(data, dict) or "slots" not in data or "security_version" not in data:
        raise _refuse(path, "are not a record of the form {slots, security_version}")
    floor = data["security_version"]
    if not isinstance(floor, int) or isinstance(floor, bool) or floor < 0:
        raise _refuse(path, "hold security_version %r, not an integer >= 0" % (floor,))
    if not isinstance(data["slots"], dict):
        raise _refuse(path, "hold slots that are not an object")
    for name, record in data["slots"].items():
        if not isinstance(record, dict):
            raise _refuse(path, "hold slot %r that is not an object" % (name,))
        for key, kind in RECORD_FIELDS.items():  # other fields are for other readers
            value = record.get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise _refuse(path, "hold slot %r field %r = %r" % (name, key, value))
        if record.get("security_version", 0) < 0:
            raise _refuse(path, "hold slot %r with a negative security_version" % (name,))
    return data


class SlotState:
    """state_dir: the agent's state dir; boot: the BootControl whose environment keeps the
    second copy of the floor (None: this file and STATE/floors.json only)."""

    def __init__(self, state_dir, boot=None):
        self.path = os.path.join(state_dir, FILE)
        self.state_dir = state_dir
        self.floors = Floors(state_dir, boot)

    def load(self):
        try:
            data = read_json(self.path, default=MISSING)
        except (ValueError, UnicodeDecodeError):
            raise _refuse(self.path, "are not valid JSON") from None
        except OSError as e:
            raise _refuse(self.path, "cannot be read: %s" % (e.strerror or e)) from None
        if data is MISSING:  # a board that never installed anything
            return {"slots": {}, "security_version": 0}
        return check_record(data, self.path)

    def _save(self, data):
        statedir.ensure(self.state_dir)
        write_json_atomic(self.path, data)

    def slot(self, name):
        return self.load()["slots"].get(name, {})

    def version(self, name):
        return self.slot(name).get("version")

    def security_floor(self):
        """The anti-rollback floor in force: the higher of this file and the device's floors."""
        recorded = self.load()["security_version"]
        return max(recorded, self.floors.read()["security_version"])

    def raise_floors(self, **values):
        """Raise the device's floors to `values` and to this file's anti-rollback floor (so a
        store that lost its copy gets it back); returns the floors."""
        recorded = self.load()["security_version"]
        values["security_version"] = max(values.get("security_version", 0), recorded)
        return self.floors.raise_to(**values)

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
        """The slot passed its trial (or an operator committed it): its security version
        becomes the anti-rollback floor, here and in the device's floors. Returns the floor."""
        data = self.load()
        record = data["slots"].setdefault(name, {})
        record["state"] = "good"
        floor = max(data["security_version"], record.get("security_version", 0))
        data["security_version"] = floor
        self._save(data)
        return self.raise_floors()["security_version"]

    def set_good(self, name, version, security_version=0):
        """Record a factory-installed slot (used when provisioning a board)."""
        data = self.load()
        data["slots"][name] = {
            "state": "good",
            "version": version,
            "security_version": security_version,
        }
        data["security_version"] = max(data["security_version"], security_version)
        self._save(data)
        self.raise_floors()

    def mark(self, name, state):
        data = self.load()
        data["slots"].setdefault(name, {})["state"] = state
        self._save(data)
