"""The boot-control contract every bootloader backend implements.

Invariant: at every moment the boot configuration names a slot that booted successfully
before (the good slot) as the fallback. `try_slot` adds a bounded number of attempts for the
new slot in front of it; only `mark_good` makes the new slot the fallback. A backend that
cannot read its state raises BootEnvError and never guesses.

Slots are named by the agent's config (usually "A" and "B"). A plain class raising
NotImplementedError (no abc) so the shape also works on MicroPython.

Beside the slot variables, a backend with an environment keeps the device's floors
(agent/core/floors.py) in FLOOR_VARS: a copy an edit of the data partition cannot lower.
"""

from agent.core import floors as floors_core
from agent.core.errors import BootEnvError

# floor field -> boot environment variable (read_floors / write_floors)
FLOOR_VARS = (
    ("security_version", "CHARGER_SECURITY_FLOOR"),
    ("root_version", "CHARGER_ROOT_FLOOR"),
    ("not_before", "CHARGER_TIME_FLOOR"),
)


class BootControl:
    name = "base"

    def __init__(self, slots, options):
        # slots: tuple of slot names in config order, e.g. ("A", "B")
        # options: the [bootloader] table of the agent config (backend-specific keys)
        self.slots = tuple(slots)
        self.options = options

    def booted_slot(self):
        """The slot the running system was booted from."""
        raise NotImplementedError

    def primary_slot(self):
        """The slot the bootloader will boot next (first in order with attempts left)."""
        raise NotImplementedError

    def try_slot(self, slot, attempts=1):
        """Boot `slot` next, for at most `attempts` boots; then fall back to the good slot."""
        raise NotImplementedError

    def mark_good(self, slot):
        """`slot` booted and passed its trial: it becomes primary with full attempts."""
        raise NotImplementedError

    def mark_bad(self, slot):
        """Never boot `slot` again until the next try_slot; the other slot becomes primary."""
        raise NotImplementedError

    def attempts_left(self, slot):
        raise NotImplementedError

    def status(self):
        """A dict for `charger-update boot status` and the inventory row:
        {"backend": name, "booted": slot, "primary": slot,
         "slots": {slot: {"attempts_left": int, "bootable": bool}}}"""
        return {
            "backend": self.name,
            "booted": self.booted_slot(),
            "primary": self.primary_slot(),
            "slots": dict(
                (s, {"attempts_left": self.attempts_left(s), "bootable": self.attempts_left(s) > 0})
                for s in self.slots
            ),
        }

    # -- the device's floors (a second store beside STATE/floors.json) --

    def floor_env(self):
        """The key=value store (read() -> dict, write(changes, deletions)) that keeps the
        floor variables, or None when this backend keeps none."""
        return getattr(self, "env", None)

    def read_floors(self):
        """{field: int} from the boot environment (a missing variable is 0), or None when
        this backend keeps no floors. BootEnvError if a value is not a number."""
        env = self.floor_env()
        if env is None:
            return None
        values = env.read()
        texts = dict((field, values.get(var)) for field, var in FLOOR_VARS)
        return floors_core.parse_text(texts, "%s floor" % self.name, BootEnvError)

    def write_floors(self, floors):
        """Store `floors` (already merged upwards by the caller) in one env write; False when
        this backend keeps no floors."""
        env = self.floor_env()
        if env is None:
            return False
        env.write(dict((var, str(int(floors[field]))) for field, var in FLOOR_VARS), ())
        return True

    def other_slot(self, slot):
        """The slot that is not `slot` (A/B pairs)."""
        for s in self.slots:
            if s != slot:
                return s
        raise ValueError("no slot other than %r" % slot)
