"""Simulated bench devices on a pty pair, so the real drivers run unchanged against them.

Invariant: a simulator owns the master side of a pty (os.openpty) and hands out the slave's
path as the device's port (what `/dev/ttyUSB1` is on a bench); it keeps the slave open itself,
so a driver closing and reopening the port never ends the simulation. Every state change is
made and published under one Condition, so a test waits for it (`wait_for`) instead of
sleeping, and reads a consistent history (`events`).
"""

import os
import select
import threading
import tty

from hil.drivers.evsim import CP_STATES, PROTOCOL_VERSION, max_current
from hil.drivers.power import FRAME_START, parse_frame


class PtyDevice:
    """Base: a thread reading the pty master; subclasses implement `_feed(bytes)`."""

    def __init__(self):
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: bytes pass as they are
        self.port = os.ttyname(self._slave)
        self._cond = threading.Condition()
        self.events = []
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()

    def wait_for(self, predicate, timeout=5.0):
        """Block until predicate(self.events) is true; return it (falsy on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.events), timeout)

    def close(self):
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._master, self._slave, self._stop_r, self._stop_w):
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _loop(self):
        while True:
            ready, _, _ = select.select([self._master, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._master, 4096)
            except OSError:  # EIO: no slave side open (cannot happen while we hold it)
                return
            self._feed(data)

    def _publish(self, event):
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def _reply(self, data):
        os.write(self._master, data)

    def _feed(self, data):
        raise NotImplementedError


class RelaySim(PtyDevice):
    """An LCUS-type relay board: parses 4-byte frames, keeps channel states.

    Like the real board it answers nothing; bytes that do not form a valid frame are dropped
    one at a time until the stream is back in step (an 0xA0 with a matching checksum)."""

    def __init__(self, channels=4, on_change=None):
        self.states = dict((ch, False) for ch in range(1, channels + 1))
        self.rejected = 0  # bytes dropped while resynchronising
        self._on_change = on_change  # e.g. a virtual board's power input
        self._pending = b""
        super().__init__()

    def _feed(self, data):
        self._pending += data
        while len(self._pending) >= 4:
            if self._pending[0] != FRAME_START:
                self._drop()
                continue
            try:
                channel, on = parse_frame(self._pending[:4])
            except ValueError:
                self._drop()
                continue
            self._pending = self._pending[4:]
            if channel in self.states:
                self._switch(channel, on)

    def _drop(self):
        self._pending = self._pending[1:]
        self.rejected += 1

    def _switch(self, channel, on):
        with self._cond:
            self.states[channel] = on
        self._publish(("relay", channel, on))
        if self._on_change:
            self._on_change(channel, on)


class EvSimDevice(PtyDevice):
    """The EV simulator of docs/hil.md: CP state set by the rig, PWM set by the 'charger'."""

    NAME = "evsim"

    def __init__(self):
        self.cp = "A"
        self.pwm = 0.0  # duty cycle the charger drives; tests set it with set_pwm()
        self._line = b""
        super().__init__()

    def set_pwm(self, duty):
        """What the charger's pilot generator does; the rig reads it back with STATUS."""
        with self._cond:
            self.pwm = float(duty)

    def _feed(self, data):
        self._line += data
        while b"\n" in self._line:
            raw, self._line = self._line.split(b"\n", 1)
            reply = self._handle(raw.decode("ascii", "replace").strip())
            self._reply(reply.encode("ascii") + b"\n")

    def _handle(self, line):
        words = line.split()
        if words == ["ID"]:
            return "ID %s %s" % (self.NAME, PROTOCOL_VERSION)
        if len(words) == 2 and words[0] == "CP":
            if words[1] not in CP_STATES:
                return "ERR bad CP state %s" % words[1]
            with self._cond:
                self.cp = words[1]
            self._publish(("cp", words[1]))
            return "OK CP %s" % words[1]
        if words == ["STATUS"]:
            with self._cond:
                cp, pwm = self.cp, self.pwm
            return "STATUS CP %s PWM %.1f MAX %.1fA" % (cp, pwm, max_current(pwm))
        return "ERR unknown command %s" % (line or "(empty)")
