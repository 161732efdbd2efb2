"""A rig's board processes end with the test process that powered them on.

A test process that is killed (SIGKILL, a CI job's timeout, a second Ctrl-C) runs no
finaliser, so a virtual board it started would go on booting by itself: holding its serial
lines, logging in to brokers under its charger id and taking the next run's messages. The
board controller puts its own pid in the child's environment (PARENT_ENV); the child calls
one of the two functions below at start. A foreign program (QEMU, mosquitto) gets a guard
instead: a small watcher process that kills it when the test process ends.

Invariant: neither ever ends a process whose parent is alive.
"""

import ctypes
import os
import select
import signal
import subprocess
import sys
import threading

PARENT_ENV = "HIL_PARENT_PID"
PR_SET_PDEATHSIG = 1


def parent_env(env=None):
    """`env` (default: this process's) plus this process's pid as the child's parent."""
    out = dict(os.environ if env is None else env)
    out[PARENT_ENV] = str(os.getpid())
    return out


def _parent(env):
    try:
        return int(env.get(PARENT_ENV, ""))
    except ValueError:
        return None


def on_parent_death(action, env=None):
    """Run `action()` in a daemon thread once the parent named in PARENT_ENV has ended (at
    once if it already has). For a Python process that must clean up after itself: the
    virtual Linux board's boot ROM kills its firmware's process group."""
    parent = _parent(os.environ if env is None else env)
    if parent is None:
        return False
    try:
        fd = os.pidfd_open(parent)
    except ProcessLookupError:
        fd = None
    # Checked after the pidfd is held: a pid reused by another process cannot pass for it.
    if fd is None or os.getppid() != parent:
        action()
        return True

    def watch():
        select.select([fd], [], [])  # a pidfd reads ready when its process has ended
        action()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
    return True


def die_with_parent(env=None):
    """SIGKILL this process when its parent ends, kept across exec. For a process that runs
    foreign code in its main thread (the MicroPython unix port): the kernel does it. The
    parent must be the thread that started this process and lives as long as it does (the
    MicroPython board's boot-loop thread does)."""
    parent = _parent(os.environ if env is None else env)
    if parent is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # ended before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def guard(pid):
    """A watcher process that SIGKILLs process `pid` (this process's child, started from any
    thread) once this process ends, and ends by itself when `pid` does: for programs that
    cannot watch for themselves. Returns its Popen (wait() it after `pid` ended)."""
    return subprocess.Popen([sys.executable, "-m", "hil.lifeline", str(pid)], env=parent_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip  # not hit by a terminal's ^C


def unguard(watcher, timeout=10):
    """Reap `guard`'s watcher once its program ended (it ends with it); one that does not
    end by then (it watched a pid reused in between) is killed."""
    if watcher is None:
        return
    try:
        watcher.wait(timeout)
    except subprocess.TimeoutExpired:
        watcher.kill()
        watcher.wait()


def _watch(pid):
    try:
        child = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    parent = _parent(os.environ)
    try:
        watched = os.pidfd_open(parent) if parent is not None else None
    except ProcessLookupError:
        watched = None
    if watched is not None and os.getppid() == parent:
        ready = select.select([watched, child], [], [])[0]
        if child in ready:
            return  # it ended first: nothing to do
    try:
        signal.pidfd_send_signal(child, signal.SIGKILL)  # by pidfd: never a reused pid
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
