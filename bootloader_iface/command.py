"""A/B through the OEM's own scripts: each contract call runs one configured command.

Invariant: we never interpret a failed or unparsable command as an answer: a non-zero exit,
a timeout, or output that is not a configured slot / a number raises BootEnvError. Commands
are split into words before {slot}/{attempts} are filled in and run without a shell, so a
value can never become shell syntax.

options["commands"] keys: try ("fw-ab try {slot} {attempts}"), mark_good, mark_bad (all
required); primary and attempts_left (print a slot / a number on stdout); booted (optional:
/proc/cmdline charger.slot= is used otherwise). options["timeout_s"] bounds each (default 30).
Optional read_floors (prints CHARGER_SECURITY_FLOOR=N lines, see contract.FLOOR_VARS) and
write_floors ("... {security_version} {root_version} {not_before}") keep the device's floors
in the OEM's store; without them the floors live in the state dir only.
"""

import shlex
import subprocess

from agent.core import floors as floors_core
from agent.core.errors import BootEnvError, ConfigError
from agent.core.text import is_digits
from bootloader_iface import BACKENDS
from bootloader_iface.booted import booted_from_cmdline, check_attempts, check_slot
from bootloader_iface.contract import FLOOR_VARS, BootControl

REQUIRED = ("try", "mark_good", "mark_bad", "primary", "attempts_left")


class CommandControl(BootControl):
    name = "command"

    def __init__(self, slots, options):
        BootControl.__init__(self, slots, options)
        self.commands = dict(options.get("commands") or {})
        missing = [c for c in REQUIRED if not self.commands.get(c)]
        if missing:
            raise ConfigError(
                "the command bootloader backend needs commands: %s" % ", ".join(missing),
                hint='add [bootloader.commands] try = "/usr/sbin/ab try {slot} {attempts}" etc.',
            )
        self.timeout = float(options.get("timeout_s", 30))

    def _run(self, which, **values):
        argv = [word.format(**values) for word in shlex.split(self.commands[which])]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BootEnvError("boot command %r failed to run: %s" % (which, e)) from None
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip()[-300:]
            raise BootEnvError(
                "boot command %r exited %d: %s" % (which, done.returncode, err or "(no output)"),
                hint="command: %s" % " ".join(argv),
            )
        return done.stdout.decode("utf-8", "replace").strip()

    def _slot_output(self, which):
        out = self._run(which)
        if out not in self.slots:
            raise BootEnvError("boot command %r printed %r, not a slot" % (which, out[:40]))
        return out

    def booted_slot(self):
        if self.commands.get("booted"):
            return self._slot_output("booted")
        return booted_from_cmdline(self.options, self.slots)

    def primary_slot(self):
        return self._slot_output("primary")

    def attempts_left(self, slot):
        out = self._run("attempts_left", slot=check_slot(slot, self.slots))
        if not is_digits(out):
            raise BootEnvError("boot command attempts_left printed %r, not a number" % out[:40])
        return int(out)

    def try_slot(self, slot, attempts=1):
        self._run("try", slot=check_slot(slot, self.slots), attempts=check_attempts(attempts))

    def mark_good(self, slot):
        self._run("mark_good", slot=check_slot(slot, self.slots))

    def mark_bad(self, slot):
        self._run("mark_bad", slot=check_slot(slot, self.slots))

    def read_floors(self):
        if not self.commands.get("read_floors"):
            return None
        values = {}
        for line in self._run("read_floors").splitlines():
            name, _, value = line.strip().partition("=")
            values[name] = value
        texts = dict((field, values.get(var)) for field, var in FLOOR_VARS)
        return floors_core.parse_text(texts, "boot command read_floors", BootEnvError)

    def write_floors(self, floors):
        if not self.commands.get("write_floors"):
            return False
        self._run("write_floors", **dict((f, str(int(floors[f]))) for f in floors_core.FIELDS))
        return True


BACKENDS[CommandControl.name] = CommandControl
