"""The device's floors: three numbers that only ever rise, whatever happens to its files.

Invariant: `security_version` (the anti-rollback floor), `root_version` (the newest root this
device has trusted) and `not_before` (the earliest "now" can be: the newest signed `created`
the device trusted, its last time sync) are only ever merged upwards, field by field; a stored
record that is not well-formed is refused, never read as 0. Every trust decision takes
effective_now() = max(clock, not_before), so a clock set back (an RTC that lost power, a
freeze attack) cannot make an expired bundle or root valid again; a signed `created` more
than `max_ahead_s` beyond that "now" is refused, never adopted as a floor of time.
Pure: the caller reads and writes the stores (agent/state/floors.py); runs on MicroPython.
"""

from agent.core import timefmt
from agent.core.errors import NotYetValid

FIELDS = ("security_version", "root_version", "not_before")
MAX_VALUE = (1 << 53) - 1  # what JSON numbers carry exactly everywhere
MAX_AHEAD_S = 86400  # a signer's clock may run this far ahead of the device's "now"


def empty():
    return {"security_version": 0, "root_version": 0, "not_before": 0}


def _value(value, where, error):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_VALUE:
        raise error("%s must be an integer 0..%d, not %r" % (where, MAX_VALUE, value))
    return value


def parse(record, where, error):
    """A stored {field: int} object -> floors (absent fields are 0); `error` otherwise."""
    if not isinstance(record, dict):
        raise error("%s does not hold the device's floors (a JSON object)" % where)
    floors = empty()
    for key in record:
        if key not in floors:
            raise error("%s holds an unknown field %r" % (where, key))
        floors[key] = _value(record[key], "%s field %s" % (where, key), error)
    return floors


def parse_text(values, where, error):
    """Floors from text values ({field: str or None}, e.g. boot env variables); a missing
    value is 0, anything but plain decimal digits is `error`."""
    floors = empty()
    for field in FIELDS:
        text = values.get(field)
        if text is None or text == "":
            continue
        if not all("0" <= c <= "9" for c in text) or len(text) > 16:
            raise error("%s: %s=%r is not a number" % (where, field, text))
        floors[field] = _value(int(text), "%s: %s" % (where, field), error)
    return floors


def merge(*records):
    """Field by field maximum of floors dicts (missing fields count as 0)."""
    out = empty()
    for record in records:
        for field in FIELDS:
            value = record.get(field) or 0
            if value > out[field]:
                out[field] = value
    return out


def effective_now(clock, not_before):
    """The time every trust decision uses: the clock, but never earlier than the floor."""
    clock = int(clock)
    return not_before if not_before > clock else clock


def sync_time(synced_at, clock, max_ahead_s=MAX_AHEAD_S):
    """A time sync's timestamp as a floor candidate: 0 when there is none, or when it lies
    further ahead of the clock than a sync could (a forged file, not a sync)."""
    if synced_at is None or synced_at > int(clock) + max_ahead_s:
        return 0
    return int(synced_at)


def check_created(created, what, clock, not_before, max_ahead_s=MAX_AHEAD_S):
    """Refuse a signed `created` more than max_ahead_s beyond max(clock, not_before).

    The device cannot tell a bundle from the future from its own RTC being behind: both look
    the same. It refuses either way, because adopting a wrong future time as its floor would
    make every later bundle look expired; a time sync (or setting the clock) resolves it.
    """
    now = effective_now(clock, not_before)
    if created <= now + max_ahead_s:
        return
    if int(clock) < not_before:
        hint = (
            "the device clock (%s) is behind the newest time it has trusted (%s): the RTC "
            "probably lost power; sync the clock (NTP) and retry"
            % (timefmt.format(max(int(clock), 0)), timefmt.format(not_before))
        )
    else:
        hint = "the signer's clock or this device's clock is wrong; sync the device clock"
    raise NotYetValid(
        "%s was created at %s, more than %d s after this device's time %s"
        % (what, timefmt.format(created), max_ahead_s, timefmt.format(now)),
        hint=hint,
    )
