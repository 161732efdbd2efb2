"""The rollout file and the sites file (TOML), validated into plain dicts with defaults.

Invariant: a spec returned by `load_rollout` has every key of DEFAULTS with a value of the
right type and range; anything else is a SpecError naming the file, the key and what to
write instead. Durations are seconds, written as 90, "90s", "15m", "6h" or "2d".
"""

import copy
import os
import sys
import zoneinfo

from fleet.errors import SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS = {
    "name": None,
    "release": None,  # URL of the signed bundle (http(s):// or file:)
    "trust_root": None,  # the release root the agents trust (verifies the bundle header)
    # Bundles of the releases chargers run now (http(s):// or file:), besides the releases of
    # earlier rollouts: a format-2 release's plan counts what a delta install downloads.
    "bases": [],
    "security": False,  # security fast track: short soaks, same halt rules
    "target": {
        "models": [],
        "hardware_revisions": [],
        "groups": [],
        "site_types": [],
        "versions": [],
        "devices": [],
        "exclude": [],
    },
    "pilot": {"per_cell": 2, "per_site": 1, "exclude_cells": [], "include": [], "soak": 86400},
    "waves": {"sizes": ["10%", "30%", "rest"], "soak": 21600},
    "fast_track": {"soak": 3600, "pilot_soak": 3600},
    "approval": {"start": False, "above_share": 0.10},
    "halt": {
        "pilot_failures": 1,
        "wave_failures": 3,
        "fleet_failures": 10,
        "rate": 0.05,
        "min_sample": 20,
        "unexplained_failures": 3,
        "other_cohorts": "approval",
    },
    "timeouts": {"download": 21600, "install": 3600, "reboot": 900, "trial": 3600},
    "schedule": {"sites": None, "site_share": 0.25, "jitter": 900, "retries": 3},
    "cost": {"per_mb": 0.0, "currency": "EUR"},
}
DURATIONS = {
    ("pilot", "soak"),
    ("waves", "soak"),
    ("fast_track", "soak"),
    ("fast_track", "pilot_soak"),
    ("timeouts", "download"),
    ("timeouts", "install"),
    ("timeouts", "reboot"),
    ("timeouts", "trial"),
    ("schedule", "jitter"),
}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SpecError("%s %s does not exist" % (what, path)) from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError("%s %s is not valid TOML: %s" % (what, path, e)) from None
    except OSError as e:
        raise SpecError("cannot read %s %s: %s" % (what, path, e.strerror)) from None


def duration(value, where):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and value[:-1].replace(".", "", 1).isdigit() and value[-1] in UNITS:
        return float(value[:-1]) * UNITS[value[-1]]
    raise SpecError(
        '%s must be a duration such as 90, "90s", "15m", "6h" or "2d", not %r' % (where, value)
    )


def _merge(path, raw):
    spec = copy.deepcopy(DEFAULTS)
    for key, value in raw.items():
        if key not in spec:
            raise SpecError(
                "%s: unknown key %r" % (path, key), hint="known keys: %s" % ", ".join(sorted(spec))
            )
        if isinstance(spec[key], dict):
            if not isinstance(value, dict):
                raise SpecError("%s: [%s] must be a table" % (path, key))
            for sub, v in value.items():
                if sub not in spec[key]:
                    raise SpecError(
                        "%s: unknown key %r in [%s]" % (path, sub, key),
                        hint="known: %s" % ", ".join(sorted(spec[key])),
                    )
                default = spec[key][sub]
                if isinstance(default, list) and not (
                    isinstance(v, list) and all(isinstance(x, (str, int)) for x in v)
                ):
                    raise SpecError("%s: [%s] %s must be a list" % (path, key, sub))
                spec[key][sub] = v
        else:
            spec[key] = value
    return spec


def load_rollout(path):
    spec = _merge(path, _read(path, "rollout file"))
    base = os.path.dirname(os.path.abspath(path))
    for key in ("name", "release"):
        if not isinstance(spec[key], str) or not spec[key]:
            raise SpecError(
                "%s: %s is missing" % (path, key),
                hint='e.g. name = "ac22-1.1.0", release = "https://.../x.cub"',
            )
    if len(spec["name"]) > 100 or not all(c.isalnum() or c in "-_." for c in spec["name"]):
        raise SpecError(
            "%s: name %r must be 1-100 letters, digits, '-', '_' or '.'" % (path, spec["name"])
        )
    if not spec["trust_root"]:
        raise SpecError(
            "%s: trust_root is missing" % path,
            hint="the release root file the chargers trust, to verify the bundle",
        )
    spec["trust_root"] = os.path.join(base, spec["trust_root"])
    spec["release"] = _bundle_url(spec["release"], base)
    bases = spec["bases"]
    if not isinstance(bases, list) or not all(isinstance(u, str) and u for u in bases):
        raise SpecError("%s: bases must be a list of bundle URLs" % path,
                        hint='e.g. bases = ["https://.../charger-1.0.0.cub"]')  # fmt: skip
    for url in bases:
        if not url.startswith(("http://", "https://", "file:")):
            raise SpecError("%s: base %r must be an http(s):// or file: URL" % (path, url))
    spec["bases"] = [_bundle_url(u, base) for u in bases]
    for section, key in DURATIONS:
        spec[section][key] = duration(spec[section][key], "[%s] %s" % (section, key))
    _check_numbers(path, spec)
    sizes = spec["waves"]["sizes"]
    for size in sizes:
        wave_size(size, 100, path)
    if sites := spec["schedule"]["sites"]:
        spec["schedule"]["sites"] = os.path.join(base, sites)
    spec["source"] = os.path.abspath(path)
    return spec


def _bundle_url(url, base):
    """A file: URL relative to the rollout file made absolute; others as they are."""
    if url.startswith("file:") and not url.startswith("file:/"):
        return "file:" + os.path.join(base, url[5:])
    return url


def _check_numbers(path, spec):
    checks = (
        ("pilot", "per_cell", 1, 1000),
        ("pilot", "per_site", 1, 1000),
        ("halt", "pilot_failures", 1, 10**6),
        ("halt", "wave_failures", 1, 10**6),
        ("halt", "fleet_failures", 1, 10**6),
        ("halt", "min_sample", 1, 10**7),
        ("halt", "unexplained_failures", 1, 10**6),
        ("schedule", "retries", 0, 20),
    )
    for section, key, lo, hi in checks:
        v = spec[section][key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise SpecError(
                "%s: [%s] %s must be an integer from %d to %d" % (path, section, key, lo, hi)
            )
    for section, key in (("halt", "rate"), ("schedule", "site_share"), ("approval", "above_share")):
        v = spec[section][key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
            raise SpecError(
                "%s: [%s] %s must be a share above 0 and at most 1, like 0.25"
                % (path, section, key)
            )
    if spec["halt"]["other_cohorts"] not in ("approval", "continue"):
        raise SpecError('%s: [halt] other_cohorts must be "approval" or "continue"' % path)


def wave_size(size, remaining, where="rollout file"):
    """'rest' | '25%' | 40 -> a count out of `remaining`."""
    if size == "rest":
        return remaining
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return min(size, remaining)
    if isinstance(size, str) and size.endswith("%"):
        try:
            share = float(size[:-1])
        except ValueError:
            share = -1
        if 0 < share <= 100:
            return min(remaining, max(1, int(round(remaining * share / 100.0))))
    raise SpecError(
        '%s: [waves] sizes entries are counts, percentages like "25%%" or "rest", '
        "not %r" % (where, size)
    )


# --- sites ----------------------------------------------------------------------------------


def _hhmm(text, where):
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        raise SpecError("%s: %r is not HH:MM" % (where, text))
    h, mi = text[:2], text[3:]
    if not (h.isdigit() and mi.isdigit()) or int(h) > 24 or int(mi) > 59:
        raise SpecError("%s: %r is not HH:MM" % (where, text))
    return (int(h) * 60 + int(mi)) % 1440


def load_sites(path):
    """{"types": {type: [(start_min, end_min)]}, "sites": {id: {tz, type, uplink}}}.

    [site_types.workplace] peak = ["07:00-10:00", "16:00-19:00"]
    [sites.hq] tz = "Europe/Berlin", type = "workplace", uplink = "cellular" | "wired"
    """
    raw = _read(path, "sites file")
    types = {}
    for name, table in (raw.get("site_types") or {}).items():
        peaks = []
        for span in table.get("peak", []):
            where = "%s: [site_types.%s] peak" % (path, name)
            if not isinstance(span, str) or "-" not in span:
                raise SpecError('%s entries look like "07:00-10:00", not %r' % (where, span))
            a, b = span.split("-", 1)
            peaks.append((_hhmm(a.strip(), where), _hhmm(b.strip(), where)))
        types[name] = peaks
    sites = {}
    for sid, table in (raw.get("sites") or {}).items():
        tz = table.get("tz", "UTC")
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise SpecError(
                "%s: [sites.%s] tz %r is not a known time zone" % (path, sid, tz),
                hint='an IANA name such as "Europe/Berlin"',
            ) from None
        stype = table.get("type", "")
        if stype and stype not in types:
            raise SpecError(
                "%s: [sites.%s] type %r has no [site_types.%s]" % (path, sid, stype, stype)
            )
        uplink = table.get("uplink", "wired")
        if uplink not in ("wired", "cellular"):
            raise SpecError('%s: [sites.%s] uplink must be "wired" or "cellular"' % (path, sid))
        sites[sid] = {"tz": tz, "type": stype, "uplink": uplink}
    return {"types": types, "sites": sites}
