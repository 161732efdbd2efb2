"""charger-fleet: roll a signed release out to a fleet of chargers (pilot, waves, halts) and
report the update matrix. Speaks only the agent's MQTT API (docs/mqtt-api.md).

Exit codes: 0 ok, 1 error, 2 bad rollout/sites file or arguments, 3 no such rollout,
4 blocked (pilot coverage, state, gate), 75 database/broker/server unreachable (retry).
"""

import argparse
import logging
import os
import queue
import sys
import textwrap
import threading
import time

from agent.core import messages as m
from fleet import matrix as mx
from fleet import planner
from fleet import projection as pj
from fleet.errors import Blocked, FleetError, SpecError, Unavailable

EXAMPLES = """examples:
  charger-fleet --mqtt 127.0.0.1:1883 matrix --html matrix.html
  charger-fleet rollout plan ac22-1.1.0.toml
  charger-fleet rollout start ac22-1.1.0.toml
  charger-fleet --mqtt 127.0.0.1:1883 serve          # the controller; run several on PostgreSQL
  charger-fleet rollout status ac22-1.1.0
  charger-fleet rollout approve ac22-1.1.0 --by alice --why "pilot looks clean"
  charger-fleet rollout resume ac22-1.1.0 --cohort AC22/rev-b/1.0.0 --why "E42 was the bench"
  charger-fleet --db postgresql://fleet@db/fleet matrix --csv > matrix.csv
"""


def _mqtt_settings(args):
    host, _, port = (
        args.mqtt or os.environ.get("CHARGER_FLEET_MQTT") or "127.0.0.1:1883"
    ).rpartition(":")
    if not host or not port.isdigit():
        raise SpecError("--mqtt must be HOST:PORT, not %r" % args.mqtt)
    s = {"host": host, "port": int(port)}
    if args.ca_file or args.cert_file:
        s["tls"] = {"ca_file": args.ca_file, "cert_file": args.cert_file, "key_file": args.key_file}
    if args.mqtt_user:
        s["username"] = args.mqtt_user
        s["password"] = os.environ.get("CHARGER_FLEET_MQTT_PASSWORD", "")
    return s


def _broker_given(args):
    return bool(args.mqtt or os.environ.get("CHARGER_FLEET_MQTT"))


def _store(args):
    from fleet.db import open_db
    from fleet.store import Store

    return Store(open_db(args.db))


def sync_inventory(store, settings, prefix, quiet_s=1.0, limit_s=60.0):
    """Read every retained inventory and online row from the broker into the database."""
    from fleet.transport import Connection

    inbox = queue.Queue()
    conn = Connection(
        settings,
        "charger-fleet-sync-%s" % os.urandom(4).hex(),
        lambda t, p, mid, q: inbox.put((t, p)),
        session_expiry_s=0,
    )
    for suffix in (m.INVENTORY, m.ONLINE):
        conn.subscribe(m.device_filter(prefix, suffix))
    conn.start()
    batch, deadline = [], time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            try:
                batch.append(inbox.get(timeout=quiet_s))
            except queue.Empty:
                break
    finally:
        conn.stop()
    import json

    rows = []
    for topic, payload in batch:
        device, suffix = m.split_topic(prefix, topic)
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            continue
        if device and isinstance(doc, dict):
            rows.append((suffix, device, doc))
    store.ingest(rows, time.time())
    return len(rows)


# -- commands ------------------------------------------------------------------------------


def cmd_matrix(args, out):
    store = _store(args)
    if _broker_given(args):
        sync_inventory(store, _mqtt_settings(args), args.prefix)
    rollout = store.rollout(args.rollout) if args.rollout else _latest(store)
    targets = store.targets(rollout["name"]) if rollout else []
    rows = mx.build(store.inventory(), targets, rollout)
    if args.html:
        with open(args.html, "w") as f:
            f.write(
                mx.to_html(
                    rows, "Update matrix%s" % (" - rollout " + rollout["name"] if rollout else "")
                )
            )
        out.write("HTML matrix written to %s (%d cells)\n" % (args.html, len(rows)))
        return 0
    fmt = "csv" if args.csv else "json" if args.json else "table"
    out.write(mx.RENDER[fmt](rows))
    return 0


def _latest(store):
    rows = store.rollouts()
    return rows[-1] if rows else None


def _plan(args, store):
    from fleet import delta
    from fleet.release import read_release
    from fleet.spec import load_rollout, load_sites

    spec = load_rollout(args.file)
    release = read_release(spec["release"], spec["trust_root"])
    if _broker_given(args):
        sync_inventory(store, _mqtt_settings(args), args.prefix)
    sites = load_sites(spec["schedule"]["sites"]) if spec["schedule"]["sites"] else None
    plan = planner.build_plan(store.inventory(), spec, release)
    versions = sorted({r["version"] for wave in plan["waves"] for r in wave}, key=str)
    plan["downloads"] = delta.per_version(spec, release, store.rollouts(), versions)
    return spec, release, sites, plan


def _cellular(row, sites):
    return bool(sites) and sites["sites"].get(row["site"], {}).get("uplink") == "cellular"


def _print_plan(out, spec, release, sites, plan):
    from fleet.windows import install_slot

    now = time.time()
    out.write(
        "rollout %s: release %s (security version %d, %d bytes), %s\n"
        % (
            spec["name"],
            release["version"],
            release["security_version"],
            release["bytes"],
            "SECURITY FAST TRACK" if spec["security"] else "normal track",
        )
    )
    out.write(
        "compatible: %s\n"
        % "; ".join(
            "%s rev %s" % (c["model"], ",".join(c["hardware_revisions"]))
            for c in release["compatible"]
        )
    )
    downloads = plan["downloads"]
    if release.get("format") == 2:
        for version, (nbytes, why) in sorted(downloads.items(), key=lambda kv: str(kv[0])):
            out.write(
                "download per charger on %s: %s of %s bytes (%s)\n"
                % (version or "?", format(nbytes, ","), format(release["bytes"], ","),
                   "whole bundle: %s" % why if why else
                   "%.1f%%, by delta; at most" % (100.0 * nbytes / release["bytes"]))
            )  # fmt: skip
    total_bytes = total_cost = 0
    for i, wave in enumerate(plan["waves"]):
        site_ids = sorted({r["site"] for r in wave})
        cellular = sum(1 for r in wave if _cellular(r, sites))
        nbytes = sum(downloads[r["version"]][0] for r in wave)
        cost = (
            sum(downloads[r["version"]][0] for r in wave if _cellular(r, sites))
            / 1e6
            * spec["cost"]["per_mb"]
        )
        total_bytes, total_cost = total_bytes + nbytes, total_cost + cost
        windows = sorted(
            {
                (
                    lambda s: (
                        "%s-%s" % (s["window"]["start"], s["window"]["end"])
                        if s["window"]
                        else "any time"
                    )
                )(install_slot(site, sites, now, 0))
                for site in site_ids[:200]
            }
        )
        out.write(
            "%-7s %6d chargers %5d sites  %10.1f MB  cellular %d: %.2f %s  windows %s\n"
            % (
                "pilot" if i == 0 else "wave %d" % i,
                len(wave),
                len(site_ids),
                nbytes / 1e6,
                cellular,
                cost,
                spec["cost"]["currency"],
                ", ".join(windows[:6]) or "-",
            )
        )
    out.write(
        "total   %6d chargers  %10.1f MB  cellular cost %.2f %s\n"
        % (
            sum(len(w) for w in plan["waves"]),
            total_bytes / 1e6,
            total_cost,
            spec["cost"]["currency"],
        )
    )
    out.write(
        "pilot covers %d of %d matrix cells\n"
        % (len(plan["cells"]) - len(plan["blocked"]), len(plan["cells"]))
    )
    for cell, why in plan["blocked"]:
        out.write("BLOCKED cell %s: %s\n" % (cell, why))
    reasons = {}
    for _, _, _, why in plan["skipped"]:
        reasons[why] = reasons.get(why, 0) + 1
    for why, n in sorted(reasons.items()):
        out.write("skipped %d: %s\n" % (n, why))


def cmd_plan(args, out):
    store = _store(args)
    spec, release, sites, plan = _plan(args, store)
    _print_plan(out, spec, release, sites, plan)
    return 4 if plan["blocked"] else 0


def cmd_start(args, out):
    store = _store(args)
    spec, release, sites, plan = _plan(args, store)
    _print_plan(out, spec, release, sites, plan)
    if plan["blocked"]:
        raise Blocked(
            "%d matrix cell(s) have no pilot charger: %s"
            % (len(plan["blocked"]), ", ".join(c for c, _ in plan["blocked"][:5])),
            hint="exclude them by name in [pilot] exclude_cells, or widen the target",
        )
    if any(r["name"] == spec["name"] for r in store.rollouts()):
        raise Blocked(
            "a rollout named %r exists already" % spec["name"],
            hint="give the new rollout another name",
        )
    rows = [
        (r["device_id"], w, planner.cohort_of(r), r["site"])
        for w, wave in enumerate(plan["waves"])
        for r in wave
    ]
    data = {
        "spec": spec,
        "release": release,
        "waves": len(plan["waves"]),
        "plan": rows,
        "skipped": plan["skipped"],
        "approve_start": spec["approval"]["start"],
    }
    store.record(time.time(), spec["name"], "created", args.by, None, data)
    state = "waiting for `approve`" if spec["approval"]["start"] else "running"
    out.write(
        "rollout %s created (%s); `charger-fleet serve` carries it out\n" % (spec["name"], state)
    )
    return 0


def cmd_status(args, out):
    store = _store(args)
    names = [args.name] if args.name else [r["name"] for r in store.rollouts()]
    while True:
        for name in names:
            out.write(status_text(store, name))
        if not args.watch:
            return 0
        out.flush()
        time.sleep(args.watch)  # a terminal refresh, not a synchronisation


def status_text(store, name):
    r = store.rollout(name)
    targets = store.targets(name)
    lines = [
        "rollout %s  release %s  state %s  wave %s/%d%s"
        % (
            name,
            r["release"]["version"],
            r["state"],
            "-" if r["wave"] < 0 else r["wave"],
            r["waves"] - 1,
            "  NEEDS APPROVAL: %s" % r["needs_approval"] if r["needs_approval"] else "",
        )
    ]
    for w in range(r["waves"]):
        group = [t for t in targets if t["wave"] == w]
        counts = {}
        for t in group:
            counts[t["state"]] = counts.get(t["state"], 0) + 1
        text = ", ".join("%s %d" % (k, counts[k]) for k in sorted(counts)) or "empty"
        lines.append("  %-7s %5d  %s" % ("pilot" if w == 0 else "wave %d" % w, len(group), text))
    by_delta = [t["downloaded"] for t in targets if t.get("downloaded") is not None]
    if by_delta:
        whole = r["release"]["bytes"] * len(by_delta)
        lines.append(
            "  by delta: %d chargers downloaded %s bytes, %.1f%% of their whole bundles (%s)"
            % (len(by_delta), format(sum(by_delta), ","), 100.0 * sum(by_delta) / whole,
               format(whole, ","))
        )  # fmt: skip
    skipped = [t for t in targets if t["wave"] < 0]
    if skipped:
        lines.append(
            "  skipped %d (never offered: rolled back before, incompatible)" % len(skipped)
        )
    for h in r["halts"]:
        lines.append(
            (
                "  halt lifted %s %s: %s; chargers %s"
                if h.get("lifted")
                else "  HALT %s %s: %s; chargers %s"
            )
            % (
                "fleet-wide" if h["scope"] == "fleet" else "cohort " + h["cohort"],
                h["check"],
                h["evidence"],
                ", ".join(h["devices"][:8]),
            )
        )
    failed = [t for t in targets if t["state"] == pj.FAILED][:10]
    for t in failed:
        lines.append("  failed %s (%s): %s" % (t["device_id"], t["cohort"], t["reason"]))
    return "\n".join(lines) + "\n"


def cmd_control(args, out):
    store = _store(args)
    r = store.rollout(args.name)
    now, kind, data = time.time(), args.command, {"why": args.why}
    if r["state"] in (pj.ABORTED, pj.DONE):
        raise Blocked("rollout %s is %s" % (args.name, r["state"]))
    if kind == "approve":
        gate = args.gate or r["needs_approval"]
        if not gate:
            raise Blocked("rollout %s waits for no approval" % args.name)
        kind, data["gate"] = "approved", gate
    elif kind == "pause":
        kind = "paused"
    elif kind == "resume":
        kind, data["cohort"] = "resumed", args.cohort
        halted = [h["cohort"] for h in pj.active_halts(r)]
        if args.cohort is not None and args.cohort not in halted:
            raise Blocked(
                "cohort %s of %s is not halted" % (args.cohort, args.name),
                hint="halted: %s" % (", ".join(c or "fleet-wide" for c in halted) or "none"),
            )
        # What the operator has seen: the halt rules count only failures after this.
        with store.engine.connect() as conn:
            counts = pj.tally(conn, args.name)
        fleet = {k: sum(c[k] for c in counts.values()) for k in planner.KINDS}
        data["acknowledged"] = dict(counts, **{pj.FLEET: fleet})
    elif kind == "abort":
        kind = "aborted"
    store.record(now, args.name, kind, args.by, None, data)
    out.write("%s: %s by %s\n" % (args.name, kind, args.by))
    return 0


def cmd_events(args, out):
    import json

    for e in _store(args).events(args.name):
        out.write(
            "%d %s %-16s %-10s %s %s\n"
            % (
                e["id"],
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e["ts"])),
                e["kind"],
                e["actor"],
                e["device_id"] or "-",
                json.dumps(e["data"], sort_keys=True)[:300],
            )
        )
    return 0


def cmd_list(args, out):
    for r in _store(args).rollouts():
        out.write("%-30s %-18s %s\n" % (r["name"], r["state"], r["release"]["version"]))
    return 0


def cmd_rebuild(args, out):
    store = _store(args)
    with store.engine.begin() as conn:
        pj.rebuild(conn)
    out.write("projection rebuilt from the event log\n")
    return 0


def cmd_serve(args, out):
    from fleet.controller import Controller

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    store = _store(args)
    stop = threading.Event()

    def say(text):
        out.write("%s %s\n" % (time.strftime("%H:%M:%S"), text))
        out.flush()

    ctl = Controller(
        store,
        _mqtt_settings(args),
        args.prefix,
        client_id=args.client_id,
        tick_s=args.tick,
        say=say,
    )
    import signal

    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    say(
        "serving %s via %s (client %s)"
        % (store.engine.url.render_as_string(True), args.mqtt or "127.0.0.1:1883", ctl.client_id)
    )
    import sqlalchemy as sa

    try:
        ctl.run(stop, leave=args.leave)
    except KeyboardInterrupt:
        pass
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as e:
        # What was received but not committed is not acknowledged either: the broker hands
        # it to the restarted controller (as after a kill -9).
        raise Unavailable(
            "database lost: %s" % str(getattr(e, "orig", e)).strip().splitlines()[0],
            hint="exiting; restart `serve` (systemd Restart=on-failure) once it is back",
        ) from None
    return 0


CONTROL = {
    "pause": (
        "stop releasing jobs and waves",
        "Jobs already sent run on; halt rules, timeouts and soaks keep being evaluated. "
        "`resume` goes on.",
    ),
    "resume": (
        "go on after a pause or lift a halt",
        "Without --cohort every halt is lifted, with it only that cohort's. A lifted halt "
        "stays in the log with the counts seen when it was lifted; the rules count only "
        "failures after it. Targets cancelled by the halt stay cancelled (plan a new "
        "rollout for them). Exit 4 if --cohort is not halted.",
    ),
    "approve": (
        "pass the approval gate the rollout waits at",
        "Gates: start ([approval] start), wave-N (a wave that takes the rollout above "
        "[approval] above_share of the fleet), after-halt-N (the next wave after a halt when "
        '[halt] other_cohorts = "approval"). Exit 4 if it waits for none.',
    ),
    "abort": (
        "stop for good: cancel every job not yet installing",
        "Chargers already installing finish their journey (the agent no longer honours a "
        "cancel then); their results are still recorded. Exit 4 if already aborted or done.",
    ),
}
COMMON = """Common options (--db, --mqtt, --by, --prefix) may also follow the command."""


def _common(p, suppress):
    """The options every command takes, before or after its name."""
    d = argparse.SUPPRESS if suppress else None
    p.add_argument(
        "--db",
        default=d,
        help="SQLite file or postgresql://USER@HOST/DB (default $CHARGER_FLEET_DB or "
        "./charger-fleet.db); created and migrated on first use",
    )
    p.add_argument(
        "--mqtt",
        default=d,
        help="broker HOST:PORT (default $CHARGER_FLEET_MQTT or 127.0.0.1:1883); `matrix` "
        "and `rollout plan|start` read the retained inventory from it when one is given",
    )
    p.add_argument(
        "--by",
        default=d if suppress else os.environ.get("USER", "operator"),
        help="who decides, recorded in the event log (default $USER)",
    )
    p.add_argument(
        "--prefix",
        default=d if suppress else m.DEFAULT_PREFIX,
        help="MQTT topic prefix of the chargers (default chargers)",
    )


def parser():
    common = argparse.ArgumentParser(add_help=False)
    _common(common, suppress=True)

    def command(sub, name, help_text, description=None, **kw):
        return sub.add_parser(
            name,
            help=help_text,
            description=textwrap.fill(description or help_text, 88) + "\n\n" + COMMON,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
        )

    p = argparse.ArgumentParser(
        prog="charger-fleet",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, suppress=False)
    p.add_argument("--ca-file", default="", help="CA of the broker's TLS certificate")
    p.add_argument("--cert-file", default="", help="the backend's client certificate (TLS)")
    p.add_argument("--key-file", default="", help="its private key")
    p.add_argument(
        "--mqtt-user", default="", help="broker user name (password: $CHARGER_FLEET_MQTT_PASSWORD)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mat = command(
        sub,
        "matrix",
        "the update matrix",
        "The update matrix: one row per model x hardware revision x version x group x site "
        "type (x components when chargers report several), with chargers online, last "
        "results, rollbacks and the versions rolled back from, and a rollout's progress "
        "(queued, in flight, soaking, succeeded, failed, unexplained, excused, cancelled, "
        "skipped; HALT marks a halted cohort).",
    )
    mat.add_argument("--rollout", help="show this rollout's progress (default: the latest)")
    g = mat.add_mutually_exclusive_group()
    g.add_argument("--csv", action="store_true", help="CSV on stdout")
    g.add_argument("--json", action="store_true", help="JSON on stdout (every field)")
    g.add_argument("--html", metavar="FILE", help="write a self-contained HTML page")
    mat.set_defaults(run=cmd_matrix)
    rollout = command(sub, "rollout", "plan, start and steer rollouts")
    ro = rollout.add_subparsers(dest="command", required=True, metavar="ACTION")
    for name, fn, text, more in (
        (
            "plan",
            cmd_plan,
            "dry run: waves, sites, windows, bytes, cost",
            "Reads the release's signed header (HTTP Range, verified against trust_root), "
            "selects the targets and prints per wave: chargers, sites, install windows, "
            "bytes to download and the cellular cost. A format-2 release installs by delta: "
            "the bytes per charger version are then fetched as a charger would fetch them, "
            "against the bundle of that version (the file's `bases`, or an earlier rollout's "
            "release); a version without one counts the whole bundle, and says why. Exit 4 "
            "when a matrix cell has no pilot charger (the cells are named).",
        ),
        (
            "start",
            cmd_start,
            "create the rollout; `serve` carries it out",
            "Plans as `plan` does and records the rollout (state running, or "
            "awaiting-approval with [approval] start). Exit 4 when a cell has no pilot "
            "charger or the name is taken.",
        ),
    ):
        c = command(ro, name, text, more)
        c.add_argument("file", help="the rollout file (TOML, see docs/fleet.md)")
        c.set_defaults(run=fn)
    st = command(
        ro,
        "status",
        "progress per wave, halts and failures",
        "Per wave: targets by state; every halt with cohort, rule, evidence and chargers; "
        "the first failures with their reasons.",
    )
    st.add_argument("name", nargs="?", help="a rollout (default: every rollout)")
    st.add_argument("--watch", type=float, metavar="S", help="refresh every S seconds")
    st.set_defaults(run=cmd_status)
    for name, (text, more) in CONTROL.items():
        c = command(ro, name, text, text + ". " + more)
        c.add_argument("name", help="the rollout")
        c.add_argument("--why", default="", help="recorded with the decision")
        if name == "resume":
            c.add_argument("--cohort", help="MODEL/HW/FROM-VERSION: lift only this halt")
        if name == "approve":
            c.add_argument("--gate", help="the gate (default: the one it waits at)")
        c.set_defaults(run=cmd_control, cohort=None, gate=None)
    ev = command(
        ro,
        "events",
        "the audit log of a rollout",
        "Every decision in order: id, time (UTC), kind, actor, charger, data.",
    )
    ev.add_argument("name", help="the rollout")
    ev.set_defaults(run=cmd_events)
    command(ro, "list", "every rollout with its state").set_defaults(run=cmd_list)
    sv = command(
        sub,
        "serve",
        "the controller: ingest statuses, advance rollouts",
        "The long-running controller. It subscribes to every charger's inventory and online "
        "rows and, through the MQTT 5 shared subscription $share/charger-fleet/..., to "
        "statuses and health; commits them before acknowledging them; and, while it holds "
        "the planner lock, advances the rollouts once per --tick. Safe to kill at any "
        "moment and restart with the same --client-id. Several on one PostgreSQL share "
        "the statuses, one plans. The broker must keep sessions and queues unbounded "
        "(docs/fleet.md). Stops on SIGTERM or Ctrl-C.",
    )
    sv.add_argument(
        "--client-id",
        help="MQTT client id (default charger-fleet-HOSTNAME); keep it across restarts so "
        "the broker keeps the statuses that arrive while it is down; one per serve process",
    )
    sv.add_argument(
        "--leave",
        action="store_true",
        help="on exit, end the broker session (this controller is retired for good)",
    )
    sv.add_argument(
        "--tick", type=float, default=1.0, help="seconds between planning rounds (default 1)"
    )
    sv.set_defaults(run=cmd_serve)
    command(
        sub,
        "rebuild",
        "rebuild the projection from the event log",
        "Drops the rollouts and targets tables and folds them again from the event log and "
        "the stored statuses and health rounds. Stop `serve` first.",
    ).set_defaults(run=cmd_rebuild)
    return p


def main(argv=None, out=None):
    out = out or sys.stdout
    args = parser().parse_args(argv)
    try:
        return args.run(args, out)
    except FleetError as e:
        sys.stderr.write("charger-fleet: %s\n" % e)
        return e.exit_code
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
