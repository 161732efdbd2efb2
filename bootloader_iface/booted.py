"""Shared helpers for backends: which slot the kernel says it booted, and slot checks.

Invariant: a slot name only comes from the boot configuration or the kernel command line, and
is always one of the configured slots; anything else is a BootEnvError, never a default.
"""

from agent.core.errors import BootEnvError, ConfigError
from agent.core.text import is_digits

CMDLINE = "/proc/cmdline"
# Our boot scripts append charger.slot=X; RAUC-style scripts use rauc.slot=X.
CMDLINE_KEYS = ("charger.slot", "rauc.slot")


def slot_from_cmdline(text, slots):
    """The slot named on a kernel command line, or None when no key is present."""
    found = None
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key in CMDLINE_KEYS:
            found = value  # the last one wins, as for the kernel's own parameters
    if found is None:
        return None
    if found not in slots:
        raise BootEnvError(
            "kernel command line names slot %r, not one of %s" % (found, ", ".join(slots)),
            hint="the boot script and [slots] in the agent config must use the same names",
        )
    return found


def booted_from_cmdline(options, slots):
    path = options.get("cmdline", CMDLINE)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise BootEnvError("cannot read %s: %s" % (path, e.strerror)) from None
    slot = slot_from_cmdline(text, slots)
    if slot is None:
        raise BootEnvError(
            "%s names no booted slot" % path,
            hint="the boot script must add charger.slot=<slot> (or rauc.slot=) to bootargs",
        )
    return slot


def check_slot(slot, slots):
    if slot not in slots:
        raise ConfigError(
            "unknown slot %r" % (slot,), hint="configured slots: %s" % ", ".join(slots)
        )
    return slot


def option_attempts(options, default):
    """options["max_attempts"] checked like an attempt count (a TOML typo is a ConfigError)."""
    value = options.get("max_attempts", default)
    if is_digits(value):
        value = int(value)
    return check_attempts(value)


def check_attempts(attempts, limit=9):
    # U-Boot's setexpr prints hex and `test -gt` reads decimal: they agree only on 0..9.
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= limit:
        raise ConfigError(
            "attempts must be an integer from 1 to %d, got %r" % (limit, attempts),
            hint="boot scripts count attempts as one decimal digit",
        )
    return attempts
