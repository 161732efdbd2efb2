"""Simulated A/B board: the RAUC-style scheme in a JSON file, for tests and the virtual board.

Invariant: same semantics as uboot-rauc (same OrderLeftControl, same boot_select); the JSON
"env" file plays the flash, the `booted` file plays the kernel command line. power_on() is the
boot ROM: it runs boot_select, saves the env first (as the real script's saveenv does), then
records the slot it boots. JSON writes are atomic (temp + fsync + rename).
"""

import os

from agent.core.errors import BootEnvError, ConfigError
from agent.state.atomic import read_json, write_atomic, write_json_atomic
from bootloader_iface import BACKENDS
from bootloader_iface.booted import booted_from_cmdline, check_slot
from bootloader_iface.uboot_rauc import OrderLeftControl, boot_select, power_on

__all__ = ["JsonEnv", "SimulatedControl", "boot_select"]


class JsonEnv:
    """A flat {name: value} JSON object as an env store. A missing file is an empty env."""

    def __init__(self, path):
        self.path = path

    def read(self):
        try:
            env = read_json(self.path, default={})
        except ValueError:
            raise BootEnvError("simulated boot env %s is not valid JSON" % self.path) from None
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise BootEnvError("simulated boot env %s must map names to strings" % self.path)
        return env

    def write(self, changes=None, deletions=()):
        env = self.read()
        env.update(changes or {})
        for key in deletions:
            env.pop(key, None)
        write_json_atomic(self.path, env)
        return env


class SimulatedControl(OrderLeftControl):
    """options: state (JSON env path, required), booted_file (default state + ".booted"),
    booted (a fixed slot, overrides the file), cmdline (used when neither exists)."""

    name = "simulated"

    def open_env(self):
        if "state" not in self.options:
            raise ConfigError(
                "the simulated bootloader needs a state file",
                hint='add state = "boot-env.json" under [bootloader]',
            )
        return JsonEnv(self.options["state"])

    def where(self):
        return "simulated env (%s)" % self.env.path

    @property
    def booted_file(self):
        return self.options.get("booted_file") or self.options["state"] + ".booted"

    def booted_slot(self):
        if self.options.get("booted"):
            return check_slot(self.options["booted"], self.slots)
        try:
            with open(self.booted_file) as f:
                slot = f.read().strip()
        except FileNotFoundError:
            if "cmdline" in self.options:
                return booted_from_cmdline(self.options, self.slots)
            raise BootEnvError(
                "simulated board has not booted yet (%s missing)" % self.booted_file,
                hint="call power_on() or write the booted slot into that file",
            ) from None
        if slot not in self.slots:
            raise BootEnvError("%s names unknown slot %r" % (self.booted_file, slot))
        return slot

    def power_on(self, max_resets=3, reset=None):
        """Run the boot ROM once: pick and count down a slot, save, record it as booted.
        reset: why the board reset (see uboot_rauc.boot_select)."""
        slot = power_on(self.env, self.slots, self.max_attempts, max_resets, reset)
        write_atomic(self.booted_file, slot.encode() + b"\n")
        return slot

    def set_booted(self, slot):
        write_atomic(self.booted_file, check_slot(slot, self.slots).encode() + b"\n")

    def power_off(self):
        """The booted slot is unknown until the next power_on()."""
        if os.path.exists(self.booted_file):
            os.unlink(self.booted_file)


BACKENDS[SimulatedControl.name] = SimulatedControl
