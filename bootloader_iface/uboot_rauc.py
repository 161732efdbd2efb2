"""RAUC-style A/B on U-Boot: BOOT_ORDER ("A B") plus BOOT_<slot>_LEFT attempt counters.

Invariant: the agent side (OrderLeftControl) and the bootloader side (boot_select, the Python
twin of scripts/boot.cmd.rauc) agree on one meaning of the variables: at power-on the first
slot in BOOT_ORDER with attempts left is booted and its counter decremented; when none has any,
all counters are reset to the default and the board resets. Every change is one env write.

BOOT_TRIAL names the slot on trial (try_slot sets it, mark_good/mark_bad of that slot clear
it); the boot side records the slot it boots in BOOT_LAST, in the same save as its counter.
Where the board knows why it reset (the SoC's reset cause, handed to the script as
charger_reset), a watchdog or panic reset while the trial slot ran (BOOT_LAST) takes its
remaining attempts away at once: a hung or crashing release falls back after one boot,
while a power loss, or a watchdog reset of the old slot before the trial slot ever ran,
leaves its attempts for the trial.

The same scheme drives GRUB (grub.py) and the simulated board (simulated.py): only the store
behind `self.env` (read() -> dict, write(changes, deletions)) differs.
"""

from agent.core.errors import BootEnvError
from agent.core.text import is_digits
from bootloader_iface import BACKENDS
from bootloader_iface.booted import booted_from_cmdline, check_attempts, check_slot, option_attempts
from bootloader_iface.contract import BootControl
from bootloader_iface.uboot_env import DEFAULT_CONFIG, UBootEnv

ORDER = "BOOT_ORDER"
TRIAL = "BOOT_TRIAL"
LAST = "BOOT_LAST"  # the slot the boot side booted last (it writes it; the agent never does)
DEFAULT_ATTEMPTS = 3  # what the sample scripts set when a counter is missing or all are spent
CRASH_RESETS = ("watchdog", "panic")  # charger_reset words that blame the slot that ran


def left_var(slot):
    return "BOOT_%s_LEFT" % slot


def _lenient_int(text):
    # U-Boot's `test N -gt 0` reads garbage as 0; the boot side must behave the same.
    text = (text or "").strip()
    return int(text) if is_digits(text) else 0


def boot_select(env, slots=("A", "B"), default_attempts=DEFAULT_ATTEMPTS, reset=None):
    """What boot.cmd.rauc (and the grub.cfg fragment) do at power-on, as a pure function.

    reset: why the board reset (charger_reset in the script; None when it cannot tell, as
    on GRUB). Returns (slot, new_env): `slot` is booted and new_env must be saved first; slot
    None means no slot had attempts left, all counters were reset and the board resets.
    """
    env = dict(env)
    if not env.get(ORDER):
        env[ORDER] = " ".join(slots)
    for slot in slots:
        if not env.get(left_var(slot)):
            env[left_var(slot)] = str(default_attempts)
    trial = env.get(TRIAL)
    if reset in CRASH_RESETS and trial in slots and env.get(LAST) == trial:
        env[left_var(trial)] = "0"  # the slot on trial ran and crashed: no more attempts
    for slot in env[ORDER].split():
        if slot in slots and _lenient_int(env.get(left_var(slot))) > 0:
            env[left_var(slot)] = str(_lenient_int(env[left_var(slot)]) - 1)
            env[LAST] = slot
            return slot, env
    for slot in slots:
        env[left_var(slot)] = str(default_attempts)
    return None, env


def power_on(env, slots=("A", "B"), default_attempts=DEFAULT_ATTEMPTS, max_resets=3, reset=None):
    """A boot ROM over any store (UBootEnv, GrubEnv, JsonEnv): select, save, return the slot.

    Saves before returning, as the script's saveenv runs before the kernel: a power cut after
    this call has used up the attempt. Follows the reset path at most `max_resets` times.
    """
    for _ in range(max_resets):
        slot, new = boot_select(env.read(), slots, default_attempts, reset)
        env.write(new, ())
        if slot is not None:
            return slot
    raise BootEnvError("no bootable slot after %d resets" % max_resets)


class OrderLeftControl(BootControl):
    """BootControl over BOOT_ORDER/BOOT_x_LEFT in any key=value store (self.env)."""

    name = "order-left"

    def __init__(self, slots, options):
        BootControl.__init__(self, slots, options)
        self.max_attempts = option_attempts(options, DEFAULT_ATTEMPTS)
        self.env = self.open_env()

    def open_env(self):
        raise NotImplementedError

    def where(self):
        return self.name

    # -- reading the scheme strictly (agent side: never guess) --

    def _state(self):
        env = self.env.read()
        order = (env.get(ORDER) or " ".join(self.slots)).split()
        unknown = [s for s in order if s not in self.slots]
        if unknown or len(set(order)) != len(order):
            raise BootEnvError(
                "%s: %s=%r is not an order of slots %s"
                % (self.where(), ORDER, env.get(ORDER), " ".join(self.slots)),
                hint="fix it with `charger-update boot mark-good SLOT`",
            )
        left = {}
        for slot in self.slots:
            value = env.get(left_var(slot)) or str(DEFAULT_ATTEMPTS)
            if not (is_digits(value) and len(value) == 1):
                raise BootEnvError(
                    "%s: %s=%r is not an attempt count 0-9" % (self.where(), left_var(slot), value)
                )
            left[slot] = int(value)
        return order + [s for s in self.slots if s not in order], left

    def booted_slot(self):
        return booted_from_cmdline(self.options, self.slots)

    def primary_slot(self):
        order, left = self._state()
        for slot in order:
            if left[slot] > 0:
                return slot
        return order[0]  # all spent: the script resets the counters and boots the first

    def attempts_left(self, slot):
        check_slot(slot, self.slots)
        return self._state()[1][slot]

    # -- changing it: each method is exactly one env write --

    def _write(self, order, changes, ended_trial=None):
        """One env write; ended_trial: the slot whose trial this ends (BOOT_TRIAL cleared)."""
        changes = dict(changes)
        changes[ORDER] = " ".join(order)
        deletions = ()
        if ended_trial is not None and self.env.read().get(TRIAL) == ended_trial:
            deletions = (TRIAL,)
        self.env.write(changes, deletions)

    def try_slot(self, slot, attempts=1):
        check_slot(slot, self.slots)
        check_attempts(attempts)
        order, left = self._state()
        if not any(left[s] > 0 for s in self.slots if s != slot):
            raise BootEnvError(
                "no other slot has boot attempts left to fall back to from %s" % slot,
                hint="mark the running slot good first (`charger-update boot mark-good`)",
            )
        changes = {left_var(slot): str(attempts), TRIAL: slot}
        self._write([slot] + [s for s in order if s != slot], changes)

    def mark_good(self, slot):
        check_slot(slot, self.slots)
        order, _ = self._state()
        changes = {left_var(slot): str(self.max_attempts)}
        self._write([slot] + [s for s in order if s != slot], changes, ended_trial=slot)

    def mark_bad(self, slot):
        check_slot(slot, self.slots)
        order, _ = self._state()
        self._write([s for s in order if s != slot] + [slot], {left_var(slot): "0"}, slot)


class UBootRaucControl(OrderLeftControl):
    """options: fw_env_config (default /etc/fw_env.config), in_place, max_attempts, cmdline."""

    name = "uboot-rauc"

    def open_env(self):
        return UBootEnv(
            self.options.get("fw_env_config", DEFAULT_CONFIG),
            in_place=bool(self.options.get("in_place", False)),
        )

    def where(self):
        return "U-Boot env (%s)" % self.env.config


BACKENDS[UBootRaucControl.name] = UBootRaucControl
