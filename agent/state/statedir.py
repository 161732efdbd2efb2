"""The agent's state dir: where it is, that it exists, and who may change it right now.

Invariant: the state dir lives on persistent storage outside the A/B slots (each slot would
otherwise carry its own floors and journal, and a switch would forget them); a state dir
that cannot be created is a ConfigError naming it. Every slot write or state change (an
install, a commit, a boot switch, a root update) holds an exclusive flock on STATE/lock; a
second writer is refused at once with StateBusy naming the holder, never left to interleave.
"""

import fcntl
import os
import stat
import sys
import time

from agent.core import timefmt
from agent.core.errors import ConfigError, StateBusy

DEFAULT_DIR = "/var/lib/charger-update"
LOCK_FILE = "lock"
MAX_HOLDER = 300  # bytes of holder description kept and shown


def ensure(state_dir):
    """Create the state dir (and parents) if needed; ConfigError if it cannot be."""
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            "cannot create the state dir %s: %s" % (state_dir, e.strerror or e),
            hint="set [state] dir to a writable directory on the persistent data partition "
            "(default %s)" % DEFAULT_DIR,
        ) from None
    if not os.path.isdir(state_dir):
        raise ConfigError("state dir %s is not a directory" % state_dir)
    return state_dir


def _device_of(path):
    """st_dev of `path`, or of its nearest existing parent (the dir may not exist yet)."""
    path = os.path.abspath(path)
    while True:
        try:
            return os.stat(path).st_dev
        except OSError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent


def _backing_file(dev):
    """The image file behind a loop device number, or None (not a loop device, no sysfs)."""
    path = "/sys/dev/block/%d:%d/loop/backing_file" % (os.major(dev), os.minor(dev))
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def check_not_on_slot(state_dir, slots, config_path="agent config"):
    """ConfigError if the state dir lies on a slot: on the filesystem of a slot's block device
    (st_dev == the target's st_rdev), or of a loop device over a slot's image file.

    slots: {slot: {slot class: target path}}. A missing target is skipped (the installer
    reports it). An overlay over the rootfs hides the device below it: see docs/agent.md.
    """
    dev = _device_of(state_dir)
    if dev is None:
        return
    backing = _backing_file(dev)
    for slot in sorted(slots):
        for cls, target in sorted(slots[slot].items()):
            try:
                st = os.stat(target)
            except OSError:
                continue
            on_device = stat.S_ISBLK(st.st_mode) and st.st_rdev == dev
            on_image = backing is not None and backing == os.path.realpath(target)
            if on_device or on_image:
                raise ConfigError(
                    "%s: [state] dir %s lies on slot %s (%s = %s): each slot would keep its own "
                    "anti-rollback floor and journal" % (config_path, state_dir, slot, cls, target),
                    hint="put the state dir on the persistent data partition (default %s)"
                    % DEFAULT_DIR,
                )


def _command():
    """`charger-update install` / `charger-update run`: the program and its command word
    (options and their values left out: they may be long or private)."""
    words = [os.path.basename(sys.argv[0])] if sys.argv and sys.argv[0] else ["python"]
    skip = False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("-"):
            skip = arg in ("--config", "-c")
            continue
        words.append(arg)
        break
    return " ".join(words)


def _describe(purpose):
    now = timefmt.format(int(time.time()))
    return ("pid %d (%s: %s) since %s" % (os.getpid(), _command(), purpose, now))[:MAX_HOLDER]


class StateLock:
    """`with StateLock(state_dir, "install 1.2.0 into slot B"):` an exclusive flock on
    STATE/lock, held for the block; StateBusy naming the holder when another has it."""

    def __init__(self, state_dir, purpose):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, LOCK_FILE)
        self.purpose = purpose
        self.fd = None

    def __enter__(self):
        ensure(self.state_dir)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise ConfigError(
                "cannot open the state lock %s: %s" % (self.path, e.strerror or e)
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, MAX_HOLDER, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise StateBusy(
                "state dir %s is locked by %s" % (self.state_dir, holder or "another process"),
                hint="wait until it finishes (or stop it), then retry",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _describe(self.purpose).encode("utf-8", "replace") + b"\n", 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)  # no stale holder shown once the lock is free
        os.close(self.fd)  # closing releases the flock
        self.fd = None
        return False
