"""A/B on U-Boot's native boot counting: bootcount, bootlimit, upgrade_available, altbootcmd.

Invariant: outside a trial (upgrade_available != 1) U-Boot boots the slot in `boot_slot` (the
good slot) and nothing is counted. try_slot points `boot_slot` at the new slot and arms the
counter; U-Boot then increments bootcount on every boot and, once bootcount > bootlimit, runs
altbootcmd, which switches `boot_slot` back to the other slot and disarms the counter
(scripts/boot.cmd.bootcount). mark_good disarms it on the new slot. One env write per change.

Where the board knows why it reset (charger_reset, as for uboot-rauc), the sample bootcmd
runs altbootcmd at once after a watchdog or panic reset of the slot on trial once it has run
(bootcount > 1 after U-Boot's increment), and passes the cause on as charger.reset=.

Needs a U-Boot built with CONFIG_BOOTCOUNT_LIMIT and CONFIG_BOOTCOUNT_ENV (Debian's qemu_arm64
build has neither: use uboot-rauc there). boot_select is the Python twin of that logic.
"""

from agent.core.errors import BootEnvError
from agent.core.text import is_digits
from bootloader_iface import BACKENDS
from bootloader_iface.booted import booted_from_cmdline, check_attempts, check_slot, option_attempts
from bootloader_iface.contract import BootControl
from bootloader_iface.uboot_env import DEFAULT_CONFIG, UBootEnv

SLOT_VAR = "boot_slot"
DEFAULT_ATTEMPTS = 3
CRASH_RESETS = ("watchdog", "panic")  # charger_reset words that blame the slot that ran


def _other(slot, slots):
    for s in slots:
        if s != slot:
            return s
    return None


def _lenient_int(text):
    text = (text or "").strip()
    return int(text) if is_digits(text) else 0


def boot_select(env, slots=("A", "B"), slot_var=SLOT_VAR, reset=None):
    """What U-Boot does at power-on with bootcount in the env, as a pure function.

    reset: why the board reset (charger_reset; None when it cannot tell). Returns
    (slot, new_env); slot None means U-Boot finds nothing to run and stops at its prompt (no
    boot slot, or the limit is exceeded and there is no altbootcmd).
    """
    env = dict(env)
    armed = env.get("upgrade_available") == "1"
    # bootcount_load() returns the stored count only when armed; it is saved only when armed.
    count = (_lenient_int(env.get("bootcount")) if armed else 0) + 1
    if armed:
        env["bootcount"] = str(count)
    limit = _lenient_int(env.get("bootlimit"))
    slot = env.get(slot_var)
    # The sample bootcmd: the slot on trial already ran (count > 1) and crashed.
    crashed = armed and count > 1 and reset in CRASH_RESETS and bool(env.get("altbootcmd"))
    if (limit and count > limit) or crashed:
        if not env.get("altbootcmd"):
            return None, env
        # altbootcmd from scripts/boot.cmd.bootcount: switch slot, disarm, saveenv, boot.
        slot = _other(slot, slots)
        env[slot_var] = slot
        env["upgrade_available"] = "0"
        env["bootcount"] = "0"
    if slot not in slots:
        return None, env
    return slot, env


def power_on(env, slots=("A", "B"), slot_var=SLOT_VAR, reset=None):
    """A boot ROM over a UBootEnv-like store: count, save, return the slot (or BootEnvError)."""
    slot, new = boot_select(env.read(), slots, slot_var, reset)
    env.write(new, ())
    if slot is None:
        raise BootEnvError("U-Boot would stop at its prompt: no slot to boot (%s)" % slot_var)
    return slot


class UBootBootcountControl(BootControl):
    """options: fw_env_config, in_place, slot_var (default boot_slot), max_attempts, cmdline."""

    name = "uboot-bootcount"

    def __init__(self, slots, options):
        BootControl.__init__(self, slots, options)
        self.slot_var = options.get("slot_var", SLOT_VAR)
        self.max_attempts = option_attempts(options, DEFAULT_ATTEMPTS)
        self.env = UBootEnv(
            options.get("fw_env_config", DEFAULT_CONFIG),
            in_place=bool(options.get("in_place", False)),
        )

    def _state(self):
        """(env, boot slot, armed, bootcount, bootlimit), strictly parsed."""
        env = self.env.read()
        slot = env.get(self.slot_var)
        if slot not in self.slots:
            raise BootEnvError(
                "U-Boot env (%s): %s=%r is not a configured slot"
                % (self.env.config, self.slot_var, slot),
                hint="set it with `charger-update boot mark-good SLOT` on a known-good system",
            )
        numbers = []
        for var in ("bootcount", "bootlimit"):
            value = env.get(var) or "0"
            if not is_digits(value):
                raise BootEnvError("U-Boot env: %s=%r is not a number" % (var, value))
            numbers.append(int(value))
        return env, slot, env.get("upgrade_available") == "1", numbers[0], numbers[1]

    def booted_slot(self):
        return booted_from_cmdline(self.options, self.slots)

    def primary_slot(self):
        _, slot, armed, count, limit = self._state()
        if armed and limit and count >= limit:
            return _other(slot, self.slots)  # the next boot exceeds the limit: altbootcmd
        return slot

    def attempts_left(self, slot):
        check_slot(slot, self.slots)
        _, boot_slot, armed, count, limit = self._state()
        if armed:
            if slot == boot_slot:
                return max(0, limit - count) if limit else self.max_attempts
            return self.max_attempts  # the good slot altbootcmd falls back to
        # Not armed: the good slot boots uncounted; the other is never booted.
        return self.max_attempts if slot == boot_slot else 0

    def try_slot(self, slot, attempts=1):
        check_slot(slot, self.slots)
        check_attempts(attempts)
        env, boot_slot, armed, _, _ = self._state()
        fallback = _other(slot, self.slots)
        fallback_good = (fallback != boot_slot) if armed else (fallback == boot_slot)
        if not fallback_good:
            raise BootEnvError(
                "slot %s is not a known-good slot to fall back to from %s" % (fallback, slot),
                hint="mark the running slot good first (`charger-update boot mark-good`)",
            )
        if not env.get("altbootcmd"):
            raise BootEnvError(
                "U-Boot env has no altbootcmd: a failing %s would never fall back" % slot,
                hint="install altbootcmd from bootloader_iface/scripts/boot.cmd.bootcount",
            )
        changes = {"bootlimit": str(attempts), "bootcount": "0", "upgrade_available": "1"}
        changes[self.slot_var] = slot
        self.env.write(changes, ())

    def mark_good(self, slot):
        check_slot(slot, self.slots)
        self._state()
        changes = {"bootcount": "0", "upgrade_available": "0"}
        changes[self.slot_var] = slot
        self.env.write(changes, ())

    def mark_bad(self, slot):
        check_slot(slot, self.slots)
        _, boot_slot, armed, _, _ = self._state()
        if slot != boot_slot and not armed:
            return  # never booted outside a trial already
        changes = {"bootcount": "0", "upgrade_available": "0"}
        changes[self.slot_var] = _other(slot, self.slots)
        self.env.write(changes, ())


BACKENDS[UBootBootcountControl.name] = UBootBootcountControl
