"""A board's serial console over pyserial: expect-style waits and a full, timestamped log.

Invariant: every byte the board sends is read by one background thread into one buffer and
into the log, in order, whether or not anyone is waiting; `expect` consumes the buffer up to
the end of its match, so consecutive expects see consecutive output and nothing is skipped or
read twice. Waiting is on a Condition the reader notifies, never sleep-polling.

Ports are opened by URL (`serial.serial_for_url`): `/dev/ttyUSB0`, a pty path, `socket://`,
`loop://`, `spy://` - the same driver on a real bench and in CI.
"""

import codecs
import re
import threading
import time

import serial

from agent.core.errors import Transient


class ConsoleTimeout(Transient):
    """The board did not print what was expected in time; carries the console tail."""

    reason = "console-timeout"


class ConsoleClosed(Transient):
    """The port closed (board powered off, QEMU exited) before the expected output came."""

    reason = "console-closed"


class Console:
    # Reads block for at most this long so close() is noticed; it bounds shutdown, not waits.
    READ_TIMEOUT_S = 0.2

    def __init__(self, url, baudrate=115200, log_path=None, clock=time.monotonic, port=None):
        self.url = url
        self._clock = clock
        self._t0 = clock()
        self._port = port or serial.serial_for_url(
            url, baudrate=baudrate, timeout=self.READ_TIMEOUT_S
        )
        self._cond = threading.Condition()
        self._text = ""  # everything received, decoded
        self._pos = 0  # start of the unconsumed part of _text
        self._closed = False
        self._eof = None  # why reading stopped, once it has
        self._partial = ""  # received text after the last newline, not yet a log line
        # Incremental, so a UTF-8 character split across two reads still decodes.
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.lines = []  # (seconds since open, "rx" | "tx", text)
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None
        self._reader = threading.Thread(target=self._read_loop, name="console-rx", daemon=True)
        self._reader.start()

    # -- public -------------------------------------------------------------------------------

    def expect(self, pattern, timeout):
        """Wait for `pattern` (regex str) in output not yet consumed; return the re.Match.

        Consumes output up to the end of the match. Raises ConsoleTimeout or ConsoleClosed
        with the last lines of the console, so a failed test shows what the board said."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                match = regex.search(self._text, self._pos)
                if match:
                    self._pos = match.end()
                    return match
                if self._eof is not None:
                    raise ConsoleClosed(
                        "console %s closed (%s) before %r" % (self.url, self._eof, regex.pattern),
                        hint="last output:\n" + self.tail(),
                    )
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise ConsoleTimeout(
                        "no %r on console %s within %.1f s" % (regex.pattern, self.url, timeout),
                        hint="last output:\n" + self.tail(),
                    )
                self._cond.wait(remaining)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        with self._cond:
            self._record("tx", data.decode("utf-8", "replace"))
        self._port.write(data)
        self._port.flush()

    def send_line(self, text, eol="\n"):
        self.send(text + eol)

    def discard(self):
        """Consume everything received so far (e.g. before sending a command)."""
        with self._cond:
            self._pos = len(self._text)

    def wait_closed(self, timeout):
        """True once the port has closed from the far side (the board's power went off)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._eof is not None, timeout)

    def text(self):
        """Everything received since the console opened."""
        with self._cond:
            return self._text

    def tail(self, n=15):
        with self._cond:
            return "\n".join(self._text.splitlines()[-n:])

    def close(self):
        self._closed = True
        self._reader.join(timeout=5 * self.READ_TIMEOUT_S + 1)
        try:
            self._port.close()
        finally:
            with self._cond:
                self._flush_partial()
            if self._log:
                self._log.close()
                self._log = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reader thread ------------------------------------------------------------------------

    def _read_loop(self):
        reason = "closed"
        try:
            while not self._closed:
                data = self._port.read(max(1, getattr(self._port, "in_waiting", 0) or 1))
                if data:
                    self._received(self._decoder.decode(data))
        except (serial.SerialException, OSError) as e:
            reason = str(e) or e.__class__.__name__
        with self._cond:
            self._eof = reason
            self._cond.notify_all()

    def _received(self, chunk):
        # U-Boot and Linux consoles send \r\n; keep \n only so patterns stay simple.
        chunk = chunk.replace("\r\n", "\n").replace("\r", "")
        with self._cond:
            self._text += chunk
            self._partial += chunk
            while "\n" in self._partial:
                line, self._partial = self._partial.split("\n", 1)
                self._record("rx", line)
            self._cond.notify_all()

    def _flush_partial(self):
        if self._partial:
            self._record("rx", self._partial)
            self._partial = ""

    def _record(self, direction, text):
        t = self._clock() - self._t0
        self.lines.append((t, direction, text))
        if self._log:
            mark = "<" if direction == "rx" else ">"
            self._log.write("%9.3f %s %s\n" % (t, mark, text.rstrip("\n")))
            self._log.flush()
