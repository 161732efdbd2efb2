"""The boot-control contract every bootloader backend implements.

Invariant: at every moment the boot configuration names a slot that booted successfully
before (the good slot) as the fallback. `try_slot` adds a bounded number of attempts for the
new slot in front of it; only `mark_good` makes the new slot the fallback. A backend that
cannot read its state raises BootEnvError and never guesses.

Slots are named by the agent's config (usually "A" and "B"). A plain class raising
NotImplementedError (no abc) so the shape also works on MicroPython.
"""


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

    def other_slot(self, slot):
        """The slot that is not `slot` (A/B pairs)."""
        for s in self.slots:
            if s != slot:
                return s
        raise ValueError("no slot other than %r" % slot)
