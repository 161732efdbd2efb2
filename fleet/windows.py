"""When a site may install: off-peak windows in the site's own time zone.

Invariant: `install_slot` never returns an install_at inside one of the site type's peak
spans, and the window it returns is a span without peak, so the agent (which waits for both)
starts no install in a site's busy hours; `in_peak` is the audit's check of the same rule.
"""

import datetime
import zoneinfo

DAY_MIN = 1440


def _segments(peaks):
    """Peak spans (start, end) in minutes, end < start wrapping midnight -> sorted, merged
    [a, b) pieces inside one day."""
    parts = []
    for a, b in peaks:
        if a == b:
            continue
        if a < b:
            parts.append((a, b))
        else:
            parts += [(a, DAY_MIN), (0, b)]
    parts.sort()
    merged = []
    for a, b in parts:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def off_peak(peaks):
    """Free spans (start, end) in minutes of the local day, a span over midnight as
    (start, end) with end < start; None when the type has no peak (any time is fine)."""
    busy = _segments(peaks)
    if not busy:
        return None
    free, at = [], 0
    for a, b in busy:
        if a > at:
            free.append((at, a))
        at = max(at, b)
    if at < DAY_MIN:
        free.append((at, DAY_MIN))
    if len(free) > 1 and free[0][0] == 0 and free[-1][1] == DAY_MIN:
        free = [(free[-1][0], free[0][1])] + free[1:-1]  # joined over midnight
    return [(a % DAY_MIN, b % DAY_MIN) for a, b in free]


def _local(epoch, tz):
    return datetime.datetime.fromtimestamp(epoch, zoneinfo.ZoneInfo(tz))


def _minute(local):
    return local.hour * 60 + local.minute


def _inside(minute, span):
    a, b = span
    return a <= minute < b if a < b else (minute >= a or minute < b)


def in_peak(epoch, site, sites):
    """True when `epoch` falls in a peak span of the site's type, in the site's time zone."""
    info = sites["sites"].get(site)
    if info is None:
        return False
    minute = _minute(_local(epoch, info["tz"]))
    return any(_inside(minute, span) for span in _segments(sites["types"].get(info["type"], [])))


def local_offset_s(epoch, tz):
    return int(_local(epoch, tz).utcoffset().total_seconds())


def install_slot(site, sites, now, jitter_cap):
    """{"install_at": epoch, "window": {"start","end"} | None, "jitter_s": int} for a job
    released to a charger of `site` at `now`. Unknown sites (not in the sites file) get no
    window: the agent's own rules (never during a session) still apply."""
    now = int(now)
    info = (sites or {"sites": {}})["sites"].get(site)
    spans = off_peak(sites["types"].get(info["type"], [])) if info else None
    if not spans:
        return {"install_at": now, "window": None, "jitter_s": int(jitter_cap)}
    local = _local(now, info["tz"])
    minute = _minute(local) + local.second / 60.0
    best = None
    for span in spans:
        if _inside(int(minute), span):
            wait = 0
        else:
            wait = (span[0] - minute) % DAY_MIN
        if best is None or wait < best[0]:
            best = (wait, span)
    wait, span = best
    start = now if wait == 0 else now + int(round(wait * 60))
    start -= start % 60 if wait else 0  # on the minute the window opens
    opened_local = _minute(_local(start, info["tz"]))
    close_in = ((span[1] - opened_local) % DAY_MIN) * 60 or DAY_MIN * 60
    jitter = int(min(jitter_cap, max(0, close_in // 2)))
    window = {"start": "%02d:%02d" % divmod(span[0], 60), "end": "%02d:%02d" % divmod(span[1], 60)}
    return {"install_at": start, "window": window, "jitter_s": jitter}
