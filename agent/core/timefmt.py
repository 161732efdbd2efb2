"""RFC 3339 UTC timestamps <-> integer epoch seconds, without datetime (MicroPython has none).

Invariant: only the one canonical form 'YYYY-MM-DDTHH:MM:SSZ' is accepted and produced, so a
timestamp has exactly one spelling and format(parse(s)) == s for every accepted s.
"""


def days_from_civil(y, m, d):
    # Howard Hinnant's algorithm: proleptic Gregorian date -> days since 1970-01-01.
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z):
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


def _days_in_month(y, m):
    if m == 2:
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        return 29 if leap else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _digits(s, start, end):
    part = s[start:end]
    if len(part) != end - start or not all("0" <= c <= "9" for c in part):
        raise ValueError("not a UTC timestamp YYYY-MM-DDTHH:MM:SSZ: %r" % (s,))
    return int(part)


def parse(s):
    """'2026-11-24T23:00:00Z' -> 1795388400. Raises ValueError on anything else."""
    if not isinstance(s, str) or len(s) != 20:
        raise ValueError("not a UTC timestamp YYYY-MM-DDTHH:MM:SSZ: %r" % (s,))
    if s[4] != "-" or s[7] != "-" or s[10] != "T" or s[13] != ":" or s[16] != ":":
        raise ValueError("not a UTC timestamp YYYY-MM-DDTHH:MM:SSZ: %r" % (s,))
    if s[19] != "Z":
        raise ValueError("timestamp must be UTC and end in 'Z': %r" % (s,))
    y, mo, d = _digits(s, 0, 4), _digits(s, 5, 7), _digits(s, 8, 10)
    h, mi, se = _digits(s, 11, 13), _digits(s, 14, 16), _digits(s, 17, 19)
    if not (1 <= mo <= 12) or not (1 <= d <= _days_in_month(y, mo)):
        raise ValueError("no such date: %r" % (s,))
    if h > 23 or mi > 59 or se > 59:
        raise ValueError("no such time of day: %r" % (s,))
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se


def format(epoch):
    """1795388400 -> '2026-11-24T23:00:00Z' (years 0000..9999)."""
    epoch = int(epoch)
    days, rest = divmod(epoch, 86400)
    y, m, d = _civil_from_days(days)
    if not (0 <= y <= 9999):
        raise ValueError("year out of range for RFC 3339: %d" % y)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, rest // 3600, rest // 60 % 60, rest % 60)
