"""What every emulated MCU has: a pty as its UART, BOOT0/NRST lines, power, and a wire model.

A pty carries bytes instantly and has no baud rate, no parity and no modem lines, so:
- Wire: with `realtime=True` the emulator paces every byte it receives and sends at the
  speed the host set on the port (read back from the pty's termios) and the frame its
  protocol prescribes (AN3155: 8E1 = 11 bits a byte; SMP: 8N1 = 10); Linux ptys force CS8
  and drop PARENB, so the frame cannot be read from the host. A reply leaves only after the
  request would have arrived and its own bytes would have left, one direction at a time.
  Flash erase/program times are added the same way. With `realtime=False` (tests) bytes
  pass at pty speed.
- Lines: DTR/RTS do not exist on a pty, so BOOT0 and NRST are FIFOs in a directory: the
  host's GPIO adapter (agent/components/lines.GpioFile) writes "1"/"0" into them as it would
  into /sys/class/gpio/gpioN/value, and the emulator reacts to each write at once.
- Power: `power(False)` stops the chip (RAM state lost, flash kept), as a cut supply does;
  the host's lines go with it (BOOT0 pulled down, NRST pulled up), so it boots from flash.

Invariant: flash contents survive resets and power cuts; everything else is rebuilt at boot.
Every reset, power change and flash operation is appended to `events` under a Condition, so
tests wait for them (`wait_for`) instead of sleeping.
"""

import os
import select
import termios
import threading
import time
import tty

SPEEDS = dict((getattr(termios, "B%d" % b), b) for b in (
    9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000,
    1152000, 1500000, 2000000) if hasattr(termios, "B%d" % b))  # fmt: skip


class Reset(Exception):
    """Raised inside the protocol when NRST, power or close interrupts it."""


class McuOnPty:
    def __init__(self, lines_dir=None, realtime=False):
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.realtime = realtime
        self._cond = threading.Condition()
        self.events = []
        self._rx = bytearray()
        self._stop_r, self._stop_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()  # power and reset from Python
        self.powered = True
        self.boot0 = False
        self.in_reset = False
        self._pending_reset = False
        self.rx_count = self.tx_count = 0
        self.faults = []  # [{"kind": "flip-rx"|"flip-tx"|"mute-tx", "at": byte index, "n": k}]
        self._line_fds = {}
        self.hook = None  # hook(event), called in the chip's thread: cut power at an exact step
        if lines_dir:
            os.makedirs(lines_dir, exist_ok=True)
            for name in ("boot0", "nrst"):
                path = os.path.join(lines_dir, name)
                if not os.path.exists(path):
                    os.mkfifo(path)
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                keep = os.open(path, os.O_WRONLY)  # never EOF while no host holds it
                self._line_fds[fd] = (name, keep)
            self.lines_dir = lines_dir
        self._rx_clock = self._tx_clock = 0.0
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._main, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    # -- what the rig and tests do -----------------------------------------------------------

    def wait_for(self, predicate, timeout=5.0):
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.events), timeout)

    def count(self, kind):
        with self._cond:
            return sum(1 for e in self.events if e[0] == kind)

    def power(self, on):
        with self._cond:
            self.powered = bool(on)
            self._pending_reset = True
            if not on:
                # The controller's GPIOs go with the shared supply: when it returns, BOOT0's
                # pull-down and NRST's pull-up hold until the host drives them again.
                self.boot0 = self.in_reset = False
        self._publish(("power", bool(on)))
        os.write(self._wake_w, b"p")

    def reset(self, boot0=None):
        """A reset pulse as the NRST line gives it (boot0 None keeps the pin as it is)."""
        if boot0 is not None:
            self.boot0 = bool(boot0)
        with self._cond:
            self._pending_reset = True
        os.write(self._wake_w, b"r")

    def close(self):
        os.write(self._stop_w, b"x")
        if self._thread:
            self._thread.join(timeout=5)
        fds = [self._master, self._slave, self._stop_r, self._stop_w, self._wake_r, self._wake_w]
        for fd, (_, keep) in self._line_fds.items():
            fds += [fd, keep]
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- the chip's life ---------------------------------------------------------------------

    def _main(self):
        while True:
            try:
                with self._cond:
                    self._pending_reset = False
                    on = self.powered and not self.in_reset
                if on:
                    self._publish(("boot", self.boot_mode()))
                    self.run()  # returns only when the chip halts
                self._idle()
            except Reset:
                continue
            except _Closed:
                return

    def _idle(self):
        """Halted, held in reset or unpowered: swallow bytes until something changes."""
        while True:
            self._get(1, None)

    def boot_mode(self):
        raise NotImplementedError

    def run(self):
        raise NotImplementedError

    # -- bytes -------------------------------------------------------------------------------

    def _publish(self, event):
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()
        if self.hook is not None:
            self.hook(event)

    FRAME_BITS = 10  # start + 8 data + stop

    def frame_bits(self):
        return self.FRAME_BITS

    def baud(self):
        return SPEEDS.get(termios.tcgetattr(self._slave)[4], 115200)

    def byte_time(self):
        return self.frame_bits() / float(self.baud())

    def busy(self, seconds):
        """The chip works (flash erase/program) for `seconds` of modelled time."""
        if self.realtime and seconds > 0:
            self._tx_clock = max(self._tx_clock, time.monotonic()) + seconds
            self._rx_clock = max(self._rx_clock, self._tx_clock)

    def _get(self, n, timeout):
        """n bytes from the host; None timeout waits forever. Raises Reset, _Closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._rx) < n:
            self._check_reset()
            wait = None if deadline is None else max(deadline - time.monotonic(), 0)
            fds = [self._master, self._stop_r, self._wake_r] + list(self._line_fds)
            ready = select.select(fds, [], [], wait)[0]
            if not ready:
                break
            if self._stop_r in ready:
                raise _Closed()
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            for fd in ready:
                if fd in self._line_fds:
                    self._line(fd)
            self._check_reset()  # bytes sent after a reset belong to the chip that boots
            if self._master in ready:
                try:
                    data = bytearray(os.read(self._master, 4096))
                except OSError:
                    raise _Closed() from None
                with self._cond:
                    running = self.powered and not self.in_reset
                if running:
                    base, self.rx_count = self.rx_count, self.rx_count + len(data)
                    self._rx += self._faults(("flip-rx",), data, base)
        self._check_reset()
        data = bytes(self._rx[:n])
        del self._rx[:n]
        if self.realtime and data:
            self._rx_clock = max(self._rx_clock, time.monotonic()) + len(data) * self.byte_time()
        return data

    def _check_reset(self):
        with self._cond:
            pending = self._pending_reset
        if pending:
            self._rx.clear()
            raise Reset()

    def _line(self, fd):
        name, _ = self._line_fds[fd]
        for ch in os.read(fd, 64).decode("ascii", "replace"):
            if ch not in "01":
                continue
            level = ch == "1"
            if name == "boot0":
                self.boot0 = level
            elif not level:
                with self._cond:
                    self.in_reset = True
                    self._pending_reset = True
                self._publish(("nrst", False))
            elif self.in_reset:
                with self._cond:
                    self.in_reset = False
                    self._pending_reset = True
                self._publish(("nrst", True))

    def send(self, data):
        base, self.tx_count = self.tx_count, self.tx_count + len(data)
        data = self._faults(("flip-tx", "mute-tx"), bytearray(data), base)
        if self.realtime:
            start = max(self._tx_clock, self._rx_clock, time.monotonic())
            self._tx_clock = start + len(data) * self.byte_time()
            delay = self._tx_clock - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the modelled wire: these bytes take this long to leave
        if data:
            os.write(self._master, bytes(data))

    def _faults(self, kinds, data, base):
        """Apply injected line faults to bytes passing one way; base: index of data[0]."""
        for f in [f for f in self.faults if f["kind"] in kinds]:
            i = f["at"] - base
            if 0 <= i < len(data):
                if f["kind"] == "mute-tx":
                    data = data[:i]  # the chip's reply is lost from here on
                else:
                    data[i] ^= 0x04  # one bit flipped that parity did not catch
                self.faults.remove(f)
                self._publish(("fault", f["kind"]))
        return data


class _Closed(Exception):
    pass
