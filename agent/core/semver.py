"""Semantic versions (semver.org 2.0.0): parse and compare, including pre-release ordering.

Invariant: compare() is a total order consistent with semver precedence; build metadata
('+...') is kept but never affects ordering. Runs on MicroPython (plain tuples, no regex).
"""

_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"


def _numeric(part, what, s):
    if not part or not part.isdigit() or not all("0" <= c <= "9" for c in part):
        raise ValueError("%s of version %r is not a number" % (what, s))
    if len(part) > 1 and part[0] == "0":
        raise ValueError("%s of version %r has a leading zero" % (what, s))
    return int(part)


def _identifiers(text, what, s):
    idents = text.split(".")
    for ident in idents:
        if not ident or not all(c in _ALNUM for c in ident):
            raise ValueError("%s of version %r has an empty or invalid identifier" % (what, s))
    return idents


def parse(s):
    """'1.2.3-rc.1+build.5' -> (1, 2, 3, ('rc', '1'), ('build', '5')). ValueError if invalid."""
    if not isinstance(s, str) or not s or len(s) > 128:
        raise ValueError("version must be a non-empty string of at most 128 characters")
    core, build = s, ()
    if "+" in core:
        core, rest = core.split("+", 1)
        build = tuple(_identifiers(rest, "build metadata", s))
    pre = ()
    if "-" in core:
        core, rest = core.split("-", 1)
        pre = tuple(_identifiers(rest, "pre-release", s))
        for ident in pre:
            if ident.isdigit() and len(ident) > 1 and ident[0] == "0":
                raise ValueError("pre-release of version %r has a leading zero" % (s,))
    parts = core.split(".")
    if len(parts) != 3:
        raise ValueError("version %r is not MAJOR.MINOR.PATCH" % (s,))
    major = _numeric(parts[0], "major", s)
    minor = _numeric(parts[1], "minor", s)
    patch = _numeric(parts[2], "patch", s)
    return (major, minor, patch, pre, build)


def _cmp(a, b):
    return (a > b) - (a < b)


def _cmp_pre(a, b):
    # A version without pre-release ranks above any pre-release of the same core version.
    if not a or not b:
        return _cmp(len(b), len(a)) if (a or b) else 0
    for x, y in zip(a, b):
        xn, yn = x.isdigit(), y.isdigit()
        if xn and yn:
            c = _cmp(int(x), int(y))
        elif xn != yn:
            c = -1 if xn else 1  # numeric identifiers rank below alphanumeric ones
        else:
            c = _cmp(x, y)
        if c:
            return c
    return _cmp(len(a), len(b))


def compare(a, b):
    """-1, 0 or 1 as version string a ranks below, equal to or above b."""
    pa, pb = parse(a), parse(b)
    c = _cmp(pa[:3], pb[:3])
    return c if c else _cmp_pre(pa[3], pb[3])


def is_valid(s):
    try:
        parse(s)
    except ValueError:
        return False
    return True
