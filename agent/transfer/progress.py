"""Progress of a long transfer for a human: a redrawn bar on a terminal, plain lines otherwise.

Invariant: output never floods a log: on a terminal the bar is redrawn at most every
REDRAW_S seconds; elsewhere one line per 10% (or per LINE_S seconds when the total is
unknown). The clock is injectable so tests see exact figures.
"""

import sys
import time

REDRAW_S = 0.2
LINE_S = 10.0
BAR_WIDTH = 30
MB = 1000.0 * 1000.0


class Progress:
    def __init__(self, total, label, stream=None, clock=None, tty=None):
        self.total = total if total else None
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock or time.monotonic
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.done_bytes = 0
        self.start = self.clock()
        self.last_draw = None
        self.next_step = 10  # percent for the next plain line
        self.finished = False

    def update(self, n):
        self.done_bytes += n
        now = self.clock()
        if self.tty:
            if self.last_draw is None or now - self.last_draw >= REDRAW_S:
                self.last_draw = now
                self._write("\r" + self._bar(now))
        elif self.total:
            percent = self.done_bytes * 100 // self.total
            if percent >= self.next_step:
                self.next_step = (percent // 10 + 1) * 10
                self._write(self._line(now) + "\n")
        elif self.last_draw is None or now - self.last_draw >= LINE_S:
            self.last_draw = now
            self._write(self._line(now) + "\n")

    def done(self):
        if self.finished:
            return
        self.finished = True
        now = self.clock()
        elapsed = max(now - self.start, 1e-9)
        summary = "%s: done, %.1f MB in %.1f s (%.1f MB/s)" % (
            self.label,
            self.done_bytes / MB,
            now - self.start,
            self.done_bytes / MB / elapsed,
        )
        if self.tty:
            self._write("\r" + self._bar(now) + "\n")
        self._write(summary + "\n")

    # -- formatting ---------------------------------------------------------------------------

    def _rate(self, now):
        elapsed = now - self.start
        return self.done_bytes / elapsed if elapsed > 0 else 0.0

    def _eta(self, now):
        rate = self._rate(now)
        if not self.total or rate <= 0:
            return "--:--"
        left = int(round(max(self.total - self.done_bytes, 0) / rate))
        return "%d:%02d" % (left // 60, left % 60)

    def _bar(self, now):
        rate = self._rate(now) / MB
        if not self.total:
            return "%s %.1f MB %.1f MB/s" % (self.label, self.done_bytes / MB, rate)
        fraction = min(self.done_bytes / float(self.total), 1.0)
        filled = int(fraction * BAR_WIDTH)
        return "%s [%s%s] %3d%% %.1f MB/s ETA %s" % (
            self.label,
            "#" * filled,
            "-" * (BAR_WIDTH - filled),
            fraction * 100,
            rate,
            self._eta(now),
        )

    def _line(self, now):
        rate = self._rate(now) / MB
        if not self.total:
            return "%s: %.1f MB, %.1f MB/s" % (self.label, self.done_bytes / MB, rate)
        return "%s: %d%% (%.1f of %.1f MB, %.1f MB/s, ETA %s)" % (
            self.label,
            self.done_bytes * 100 // self.total,
            self.done_bytes / MB,
            self.total / MB,
            rate,
            self._eta(now),
        )

    def _write(self, text):
        self.stream.write(text)
        self.stream.flush()
