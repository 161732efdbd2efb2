"""The update matrix: model x hardware revision x version x group x site type (x components
once rows carry several), with counts by last result, rollbacks and the rollout's progress.

Invariant: every inventory row is counted in exactly one matrix row, so the `chargers`
column sums to the inventory size (the reconciliation the tests check).
"""

import csv
import html
import io
import json

from fleet import projection as pj

KEY = ("model", "hardware_revision", "version", "group", "site_type")
RESULTS = ("Committed", "RolledBack", "failed", "none")
PROGRESS = ("queued", "in_flight", "soaking", "succeeded", "failed", "unexplained", "excused",
            "cancelled", "skipped")  # fmt: skip
_PROGRESS_OF = {
    pj.PLANNED: "queued",
    pj.SOAKING: "soaking",
    pj.SUCCEEDED: "succeeded",
    pj.FAILED: "failed",
    pj.CANCELLED: "cancelled",
    pj.SKIPPED: "skipped",
    pj.EXCUSED: "excused",  # rolled back by power cuts: not the release's fault
    pj.UNEXPLAINED: "unexplained",  # rolled back after resets of unknown cause
}


def _components(row, multi):
    if not multi:
        return None
    return ",".join("%s=%s" % (k, v) for k, v in sorted(row["components"].items())) or "-"


def build(inventory, targets=(), rollout=None):
    """[{key fields, components?, chargers, online, results..., rollbacks, target,
    progress..., halted}] sorted by key."""
    multi = any(len(r["components"]) > 1 for r in inventory)
    by_device = {t["device_id"]: t for t in targets}
    halted = {h["cohort"] for h in pj.active_halts(rollout)} if rollout else set()
    target_version = (rollout or {}).get("release", {}).get("version")
    cells = {}
    for r in inventory:
        key = tuple(r[k] or "" for k in KEY) + (_components(r, multi),)
        cell = cells.get(key)
        if cell is None:
            cell = dict(
                zip(KEY, key[:-1]),
                chargers=0,
                online=0,
                rollbacks=0,
                target="",
                halted=False,
                rolled_back_from=[],
            )
            if multi:
                cell["components"] = key[-1]
            for name in RESULTS + PROGRESS:
                cell[name] = 0
            cells[key] = cell
        cell["chargers"] += 1
        cell["online"] += 1 if r["online"] else 0
        result = r["last_result"]
        if result in ("Committed", "RolledBack"):
            cell[result] += 1
        elif result:
            cell["failed"] += 1
        else:
            cell["none"] += 1
        power_loss = r.get("power_loss_rollbacks") or []
        if r["rollbacks"] or power_loss:
            cell["rollbacks"] += 1
            for v in list(r["rollbacks"]) + ["%s (power-loss)" % v for v in power_loss]:
                if v not in cell["rolled_back_from"]:
                    cell["rolled_back_from"].append(v)
        t = by_device.get(r["device_id"])
        if t is not None:
            cell["target"] = target_version or ""
            cell[_PROGRESS_OF.get(t["state"], "in_flight")] += 1
            if t["cohort"] in halted or None in halted:
                cell["halted"] = True
    return [cells[k] for k in sorted(cells, key=lambda k: tuple(x or "" for x in k))]


def columns(rows):
    extra = ["components"] if rows and "components" in rows[0] else []
    return (
        list(KEY)
        + extra
        + ["chargers", "online"]
        + list(RESULTS)
        + ["rollbacks", "rolled_back_from", "target"]
        + list(PROGRESS)
        + ["halted"]
    )


def _text(row, col):
    value = row[col]
    if col == "halted":
        return "HALT" if value else ""
    if isinstance(value, list):
        return ",".join(value) or "-"
    return str(value)


def to_json(rows):
    return json.dumps(rows, indent=1, sort_keys=True)


def to_csv(rows):
    out = io.StringIO()
    w = csv.writer(out)
    cols = columns(rows)
    w.writerow(cols)
    for r in rows:
        w.writerow([_text(r, c) for c in cols])
    return out.getvalue()


SHORT = {
    "hardware_revision": "hw",
    "site_type": "site type",
    "chargers": "n",
    "Committed": "commit",
    "RolledBack": "rolledback",
    "in_flight": "flying",
    "succeeded": "ok",
    "cancelled": "cancel",
    "unexplained": "unexpl",
    "rolled_back_from": "rolled back from",
}


def to_table(rows):
    cols = columns(rows)
    head = [SHORT.get(c, c) for c in cols]
    cells = [[_text(r, c) for c in cols] for r in rows]
    widths = [max([len(h)] + [len(x[i]) for x in cells]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(x, widths)) for x in cells]
    total = sum(r["chargers"] for r in rows)
    lines.append("%d chargers in %d cells" % (total, len(rows)))
    return "\n".join(lines) + "\n"


COLOURS = {"Committed": "#2e7d32", "RolledBack": "#c62828", "failed": "#ef6c00", "none": "#9e9e9e"}


def to_html(rows, title="Update matrix"):
    """A self-contained page: the matrix with a bar of last results per cell."""
    cols = columns(rows)
    esc = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>%s</title><style>"
        "body{font:13px sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        ".bar{display:flex;width:160px;height:12px;background:#eee}"
        ".bar span{display:block;height:12px}tr.halt{background:#fdecea}"
        "</style></head><body><h1>%s</h1><p>" % (esc(title), esc(title))
    ]
    out.append(
        " ".join(
            "<span style='color:%s'>&#9632;</span> %s" % (c, esc(n)) for n, c in COLOURS.items()
        )
    )
    out.append(
        "</p><table><tr>%s<th>last results</th></tr>"
        % "".join("<th>%s</th>" % esc(SHORT.get(c, c)) for c in cols)
    )
    for r in rows:
        n = max(1, r["chargers"])
        bar = "".join(
            "<span title='%s: %d' style='width:%.1f%%;background:%s'></span>"
            % (k, r[k], 100.0 * r[k] / n, c)
            for k, c in COLOURS.items()
            if r[k]
        )
        cells = "".join("<td>%s</td>" % esc(_text(r, c)) for c in cols)
        out.append(
            "<tr class='%s'>%s<td><div class='bar'>%s</div></td></tr>"
            % ("halt" if r["halted"] else "", cells, bar)
        )
    total = sum(r["chargers"] for r in rows)
    out.append("</table><p>%d chargers in %d cells</p></body></html>\n" % (total, len(rows)))
    return "".join(out)


RENDER = {"table": to_table, "csv": to_csv, "json": to_json, "html": to_html}
