"""The device's floors (agent/core/floors.py) in two stores: STATE/floors.json on the data
partition and variables in the boot environment (bootloader_iface.contract.FLOOR_VARS).

Invariant: read() is the field-by-field maximum of both stores, so deleting, blanking or
rolling back either one alone lowers nothing (as ESP-IDF keeps `secure_version` in eFuse
beside its data); raise_to() writes the merged values to the boot environment first (the
store a data-partition edit cannot reach), then to the file, and so also heals a store that
lost its copy. A store holding anything but well-formed floors is an error (ConfigError for
the file, BootEnvError for the environment), never read as 0. Writers hold the state lock.
"""

import logging
import os

from agent.core import floors as floors_core
from agent.core.errors import ConfigError
from agent.state import statedir
from agent.state.atomic import read_json, write_json_atomic

log = logging.getLogger("charger-update")

FILE = "floors.json"


class Floors:
    """state_dir: the agent's state dir; boot: a BootControl (None: the file only)."""

    def __init__(self, state_dir, boot=None):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILE)
        self.boot = boot

    def _file(self):
        try:
            record = read_json(self.path, default=None)
        except (ValueError, UnicodeDecodeError):
            record = "not JSON"
        except OSError as e:
            raise ConfigError(
                "cannot read the device's floors %s: %s" % (self.path, e.strerror or e),
                hint="check the data partition; the boot environment keeps a copy",
            ) from None
        if record is None:
            return floors_core.empty()
        return floors_core.parse(record, self.path, _corrupt)

    def _env(self):
        return self.boot.read_floors() if self.boot is not None else None

    def read(self):
        """{security_version, root_version, not_before}: the higher of both stores."""
        return floors_core.merge(self._file(), self._env() or {})

    def raise_to(self, **values):
        """Raise the floors to at least `values` in both stores; returns the new floors. A
        store found below the other (a reflashed boot env, a deleted file) gets its copy back."""
        kept, env = self._file(), self._env()
        known = floors_core.merge(kept, env or {})
        for name, store in (("state dir", kept), ("boot environment", env)):
            if store is not None and store != known:
                log.warning(
                    "the %s lost the device's floors (%s); restoring %s", name, store, known
                )
        new = floors_core.merge(known, values)
        if env is not None and env != new:
            self.boot.write_floors(new)
        if kept != new:
            statedir.ensure(self.state_dir)
            write_json_atomic(self.path, new)
        return new


def _corrupt(message):
    return ConfigError(
        message,
        hint="the data partition was damaged or edited; restore the file from a backup, or "
        "re-provision the board (the boot environment keeps a copy of the floors)",
    )
