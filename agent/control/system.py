"""The operating-system edge: reboot, watchdog, local time, and why this boot happened.

Invariant: the watchdog is petted only from the daemon's loop (never from a helper thread),
so a hung agent really stops petting and the board's watchdog resets it; after too many
resets the bootloader's attempt counter brings back the good slot. The reset cause is only
ever what the platform says (kernel command line, watchdog bootstatus); without a word from
it the cause is "unknown", never guessed.
"""

import os
import shlex
import socket
import subprocess
import time

from agent.core import resets
from agent.core.errors import ConfigError
from agent.core.text import is_digits

CMDLINE = "/proc/cmdline"
RESET_KEY = "charger.reset"  # the boot script puts the SoC's reset cause here
BOOTSTATUS = "/sys/class/watchdog/watchdog0/bootstatus"
WDIOF_CARDRESET = 0x0020  # linux/watchdog.h: the watchdog reset the board last time
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def sd_notify(message, env=os.environ):
    """systemd's notify protocol: one datagram to $NOTIFY_SOCKET; a no-op without it."""
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), path)
        except OSError:
            return False
    return True


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def reset_from_cmdline(text):
    """The cause named by charger.reset= (or androidboot.bootreason=) on a kernel command
    line; None when neither is there."""
    found = None
    for word in (text or "").split():
        key, sep, value = word.partition("=")
        if sep and key in (RESET_KEY, "androidboot.bootreason"):
            found = value
    return None if found is None else resets.normalise(found)


def watchdog_interval_s(env=os.environ, pid=None):
    """How often to pet systemd's watchdog: half of $WATCHDOG_USEC (as sd_watchdog_enabled
    advises), or None when no watchdog watches this process ($WATCHDOG_PID names another)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID")
    if usec <= 0 or (owner and owner != str(pid if pid is not None else os.getpid())):
        return None
    return usec / 2e6


class System:
    """[system] reboot_command (default "systemctl reboot"), utc_offset_s (default: the
    host's local time zone), and where this boot's facts come from: cmdline (default
    /proc/cmdline), watchdog_bootstatus (default the first watchdog's), boot_id_file
    (default /proc/sys/kernel/random/boot_id). `resolve` makes relative paths absolute.
    `watchdog_interval_s`: how often the daemon's loop must pet the watchdog (None: no
    watchdog, the loop may sleep until something happens)."""

    def __init__(self, options, resolve=None, env=os.environ):
        self.options = options
        self.resolve = resolve or (lambda path: path)
        self.watchdog_interval_s = watchdog_interval_s(env)
        command = options.get("reboot_command", "systemctl reboot")
        self.reboot_command = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.reboot_command:
            raise ConfigError("[system] reboot_command is empty", hint='e.g. "systemctl reboot"')

    def reboot(self):
        """True when the reboot command accepted the request (the board goes down soon)."""
        try:
            return subprocess.run(self.reboot_command, check=False).returncode == 0
        except OSError:
            return False

    def pet(self):
        sd_notify("WATCHDOG=1")

    def ready(self):
        sd_notify("READY=1")

    def reset_cause(self):
        """Why the board started this boot (agent/core/resets.py): the boot script's
        charger.reset= on the kernel command line, else a watchdog bootstatus that says the
        watchdog fired, else "unknown". A command-line word nobody knows (or an empty one,
        a script passing an unset charger_reset) counts as no word: the watchdog may know."""
        cmdline = _read(self.resolve(self.options.get("cmdline", CMDLINE)))
        cause = reset_from_cmdline(cmdline)
        if cause is not None and cause != resets.UNKNOWN:
            return cause
        status = _read(self.resolve(self.options.get("watchdog_bootstatus", BOOTSTATUS)))
        if is_digits(status) and int(status) & WDIOF_CARDRESET:
            return resets.WATCHDOG
        return resets.UNKNOWN

    def boot_facts(self):
        """{"reset", "id"} of this boot, as Journey.resume takes them."""
        return {
            "reset": self.reset_cause(),
            "id": _read(self.resolve(self.options.get("boot_id_file", BOOT_ID))),
        }

    def local_offset_s(self):
        if "utc_offset_s" in self.options:
            return int(self.options["utc_offset_s"])
        return time.localtime().tm_gmtoff
