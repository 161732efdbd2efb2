"""Pure rollout decisions: who is targeted, the pilot, the waves, and when to halt.

Invariant: no I/O and no clock; the same inventory, spec and release always give the same
plan (order comes from a hash of rollout name and device id, not from dict or row order).
The pilot covers every matrix cell the rollout touches with at most one charger per site, or
the plan names the cells it could not cover; a charger that rolled back from the release's
version is never planned.
"""

import hashlib

from fleet.spec import wave_size

PILOT = 0


def cohort_of(row):
    """The halt unit: model x hardware revision x from-version."""
    return "%s/%s/%s" % (row["model"], row["hardware_revision"], row["version"] or "?")


def cell_of(row):
    """A matrix cell: model x hardware revision x version x group x site type."""
    return "%s/%s/%s/%s/%s" % (
        row["model"],
        row["hardware_revision"],
        row["version"] or "?",
        row["group"] or "-",
        row["site_type"] or "-",
    )


def _order(name, device):
    return hashlib.sha256(("%s\0%s" % (name, device)).encode()).hexdigest()


def compatible(release, row):
    for c in release["compatible"]:
        if c["model"] == row["model"] and row["hardware_revision"] in c["hardware_revisions"]:
            return True
    return False


def _matches(t, row):
    def ok(values, value):
        return not values or value in values

    return (
        ok(t["models"], row["model"])
        and ok(t["hardware_revisions"], row["hardware_revision"])
        and ok(t["groups"], row["group"])
        and ok(t["site_types"], row["site_type"])
        and ok(t["versions"], row["version"])
        and ok(t["devices"], row["device_id"])
        and row["device_id"] not in t["exclude"]
    )


def eligibility(spec, release, row):
    """None if the charger should get the release, else why not (None for a filter miss
    too, with `False` meaning "not part of this rollout at all")."""
    if not _matches(spec["target"], row):
        return False
    if row["version"] == release["version"]:
        return False  # already there
    if release["version"] in row["rollbacks"]:
        return "rolled back from %s before: never offered again" % release["version"]
    floor = row.get("security_floor")
    if floor is not None and release["security_version"] < floor:
        return "security version %d is below the charger's anti-rollback floor %d" % (
            release["security_version"],
            floor,
        )
    if not compatible(release, row):
        return "release is not for %s rev %s" % (row["model"], row["hardware_revision"])
    return None


def select(inventory, spec, release):
    """([target rows], [(device, cohort, site, why)])."""
    chosen, skipped = [], []
    for row in inventory:
        why = eligibility(spec, release, row)
        if why is None:
            chosen.append(row)
        elif why is not False:
            skipped.append((row["device_id"], cohort_of(row), row["site"], why))
    return chosen, sorted(skipped)


def pick_pilot(rows, spec):
    """(pilot rows, blocked [(cell, why)]): at least k per cell where the cell's sites allow,
    at most `per_site` chargers per site (default one); cells with the fewest sites choose
    first."""
    k, name = spec["pilot"]["per_cell"], spec["name"]
    excluded = set(spec["pilot"]["exclude_cells"])
    cells = {}
    for row in rows:
        cells.setdefault(cell_of(row), []).append(row)
    per_site = spec["pilot"].get("per_site", 1)
    used, pilot, blocked = {}, [], []

    def full(site):
        return used.get(site, 0) >= per_site

    # Chargers the operator names (a bench, the lab's own) go first, still one per site.
    include = set(spec["pilot"].get("include", []))
    got_in = {}
    for row in sorted(rows, key=lambda r: r["device_id"]):
        site = row["site"] or "device:" + row["device_id"]
        if row["device_id"] in include and not full(site):
            used[site] = used.get(site, 0) + 1
            pilot.append(row)
            got_in[cell_of(row)] = got_in.get(cell_of(row), 0) + 1

    def fewest_sites(cell):
        return (len({r["site"] for r in cells[cell]}), cell)

    for cell in sorted(cells, key=fewest_sites):
        if cell in excluded:
            continue
        got = got_in.get(cell, 0)
        for row in sorted(cells[cell], key=lambda r: _order(name, r["device_id"])):
            if got >= k:
                break
            if row["device_id"] in include:
                continue
            site = row["site"] or "device:" + row["device_id"]  # no site: its own
            if full(site):
                continue
            used[site] = used.get(site, 0) + 1
            pilot.append(row)
            got += 1
        if got == 0:
            blocked.append(
                (
                    cell,
                    "no pilot charger: every site of this cell already has one "
                    "(exclude the cell by name in [pilot] exclude_cells)",
                )
            )
    return pilot, blocked


def build_plan(inventory, spec, release):
    """{"waves": [[rows] (0 = pilot), ...], "blocked", "skipped", "cells"}."""
    rows, skipped = select(inventory, spec, release)
    pilot, blocked = pick_pilot(rows, spec)
    in_pilot = {r["device_id"] for r in pilot}
    rest = sorted(
        (r for r in rows if r["device_id"] not in in_pilot),
        key=lambda r: _order(spec["name"], r["device_id"]),
    )
    waves, total, i = [pilot], len(rest), 0
    for n, size in enumerate(spec["waves"]["sizes"]):
        last = n == len(spec["waves"]["sizes"]) - 1
        count = total - i if last else wave_size(size, total)
        waves.append(rest[i : i + count])
        i += count
    if i < total:
        waves[-1] += rest[i:]
    return {
        "waves": waves,
        "blocked": blocked,
        "skipped": skipped,
        "cells": sorted({cell_of(r) for r in rows}),
    }


# --- halt rules --------------------------------------------------------------------------------


def crossed(failed, finished, limit, rate, min_sample):
    """The rule that fires, or None: an absolute count, or a rate after a minimum sample."""
    if failed >= limit:
        return "count", "%d failed (limit %d)" % (failed, limit)
    if finished >= min_sample and finished and failed / finished > rate:
        return "rate", "%d of %d finished failed (%.1f%% > %.1f%%, after at least %d)" % (
            failed,
            finished,
            100.0 * failed / finished,
            100.0 * rate,
            min_sample,
        )
    return None


def unexplained(count, limit):
    """Rollbacks by resets the boards cannot explain: a halt once several report them."""
    if count >= limit:
        return "unexplained-resets", "%d rolled back after resets of unknown cause (limit %d)" % (
            count,
            limit,
        )
    return None


def _since(count, seen):
    return {k: max(0, count[k] - (seen or {}).get(k, 0)) for k in KINDS}


KINDS = ("failed", "finished", "unexplained")


def halts(counts, spec, wave, halted_cohorts, acknowledged=None):
    """New halts [{scope, cohort, check, evidence}] for counts {cohort: {"failed",
    "finished", "unexplained"}} (a cohort's finished chargers include its failed and
    unexplained ones; power-loss rollbacks are in none of them). acknowledged: the counts
    at which an operator lifted a cohort's (None: the fleet's) halt; only what came after
    counts again."""
    h, seen = spec["halt"], acknowledged or {}
    limit = h["pilot_failures"] if wave <= PILOT else h["wave_failures"]
    found = []
    for cohort in sorted(counts):
        if cohort in halted_cohorts:
            continue
        c = _since(counts[cohort], seen.get(cohort))
        rule = crossed(c["failed"], c["finished"], limit, h["rate"], h["min_sample"])
        rule = rule or unexplained(c["unexplained"], h["unexplained_failures"])
        if rule:
            found.append(
                {"scope": "cohort", "cohort": cohort, "check": rule[0], "evidence": rule[1]}
            )
    # A cohort's halt already contains its failures; the fleet-wide rule watches the cohorts
    # still running (failures spread thinly over many cohorts).
    stopped = set(halted_cohorts) | {f["cohort"] for f in found}
    running = [c for cohort, c in counts.items() if cohort not in stopped]
    total = _since({k: sum(c[k] for c in running) for k in KINDS}, seen.get(None))
    rule = crossed(
        total["failed"], total["finished"], h["fleet_failures"], h["rate"], h["min_sample"]
    )
    rule = rule or unexplained(total["unexplained"], h["fleet_failures"])
    if rule and None not in halted_cohorts:
        found.append({"scope": "fleet", "cohort": None, "check": rule[0], "evidence": rule[1]})
    return found
