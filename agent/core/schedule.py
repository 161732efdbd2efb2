"""When a job may download and when it may install: a pure function of the clock and the job.

Invariant: `decide` never answers "go" for an install while a charging session is active, nor
outside the job's local-time window, nor before its not-before / install-at times (plus jitter).
The same inputs always give the same answer: the random jitter is a value in [0, 1) drawn once
per job by the caller and passed in, so a restart does not move the start time.

Answers: ("go",) | ("wait", until_epoch, why) | ("expired",).
`why` is one of the WAIT_* strings, so the driver can report *why* it defers.

Runs on MicroPython: integer arithmetic only, no time/datetime imports.
"""

DOWNLOAD = "download"
INSTALL = "install"

WAIT_NOT_BEFORE = "not-before"
WAIT_INSTALL_AT = "install-at"
WAIT_WINDOW = "window"
WAIT_SESSION = "charging-session"

# With no window to close, a deferred install looks again this often (the daemon also ticks
# at once when it hears the session end).
SESSION_RECHECK_S = 300
DAY = 86400


def jitter_of(job, rng_value):
    """The job's jitter in whole seconds for a random value in [0, 1)."""
    if not job.jitter_s or rng_value is None:
        return 0
    rng_value = min(max(rng_value, 0.0), 0.999999)
    return int(rng_value * job.jitter_s)


def decide(now, local_offset_s, job, session_active, rng_value, phase=INSTALL, since=0):
    """Go, wait (until when and why) or expired, for `phase` of `job` at epoch `now`.

    local_offset_s: local time minus UTC, for the install window. since: when the job was
    accepted; a download with no not-before is spread by jitter from that moment."""
    if job.deadline is not None and now >= job.deadline:
        return ("expired",)
    jitter = jitter_of(job, rng_value)
    if phase == DOWNLOAD:
        return _decide_download(now, job, jitter, since)
    if phase != INSTALL:
        raise ValueError("unknown phase %r" % (phase,))
    earliest, why = _install_earliest(job, jitter)
    if job.window is None:
        if now < earliest:
            return ("wait", earliest, why)
        if session_active:
            return ("wait", now + SESSION_RECHECK_S, WAIT_SESSION)
        return ("go",)
    # Without an install-at time the jitter spreads starts over the window instead.
    in_window = 0 if job.install_at is not None else jitter
    start, close = _window_start(
        max(now, earliest), earliest, local_offset_s, job.window, in_window
    )
    if job.deadline is not None and start >= job.deadline:
        return ("expired",)
    if now < start:
        return ("wait", start, WAIT_WINDOW if start > earliest else why)
    if session_active:
        # Defer while the window is open; once it closes the next answer waits for tomorrow.
        return ("wait", min(close, now + SESSION_RECHECK_S), WAIT_SESSION)
    return ("go",)


def _decide_download(now, job, jitter, since):
    base = max(job.not_before or 0, since or 0)
    go_at = base + jitter
    if now < go_at:
        return ("wait", go_at, WAIT_NOT_BEFORE)
    return ("go",)


def _install_earliest(job, jitter):
    earliest, why = job.not_before or 0, WAIT_NOT_BEFORE
    if job.install_at is not None and job.install_at + jitter > earliest:
        earliest, why = job.install_at + jitter, WAIT_INSTALL_AT
    return earliest, why


def window_occurrence(t, local_offset_s, window):
    """(open, close) epoch seconds of the window occurrence containing `t`, or the next one."""
    start_min, end_min = window
    duration = ((end_min - start_min) % 1440) * 60
    local = t + local_offset_s
    day = local - local % DAY
    # Yesterday's occurrence may still be open when the window crosses midnight.
    for d in (-1, 0, 1):
        open_local = day + d * DAY + start_min * 60
        if open_local + duration > local:
            return open_local - local_offset_s, open_local + duration - local_offset_s
    raise AssertionError("unreachable: tomorrow's window always closes after now")


def _window_start(t, earliest, local_offset_s, window, in_window_jitter):
    """(first go moment, close) within the first occurrence at or after `t` that still has
    room after `earliest` and the jitter."""
    for _ in range(3):
        opened, close = window_occurrence(t, local_offset_s, window)
        start = max(earliest, opened + min(in_window_jitter, close - opened - 1))
        if start < close:
            return start, close
        t = close
    raise AssertionError("unreachable: a later occurrence always has room")


def in_window(now, local_offset_s, window):
    """True when `now` falls inside the local-time window (always True without one)."""
    if window is None:
        return True
    opened, _ = window_occurrence(now, local_offset_s, window)
    return opened <= now
