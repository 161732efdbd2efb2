"""The operating-system edge: reboot, watchdog and local time.

Invariant: the watchdog is petted only from the daemon's loop (never from a helper thread),
so a hung agent really stops petting and the board's watchdog resets it; after too many
resets the bootloader's attempt counter brings back the good slot.
"""

import os
import shlex
import socket
import subprocess
import time

from agent.core.errors import ConfigError


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
    host's local time zone). `watchdog_interval_s`: how often the daemon's loop must pet
    the watchdog (None: no watchdog, the loop may sleep until something happens)."""

    def __init__(self, options, env=os.environ):
        self.options = options
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

    def local_offset_s(self):
        if "utc_offset_s" in self.options:
            return int(self.options["utc_offset_s"])
        return time.localtime().tm_gmtoff
