"""The projection (rollouts, targets) as a fold over the event log and the device logs.

Invariant: the live controller and `rebuild` change the projection only through these
functions, so rebuilding from the logs gives the projection the controller had: events are
applied in id order, then statuses in (device, seq) order, then health rounds. A target in a
final state never changes again, which makes the result independent of how events and
statuses interleaved.
"""

import json

import sqlalchemy as sa

from agent.core import messages as m
from fleet.schema import events, health, rollouts, statuses, targets

# Target states.
PLANNED, SENT = "planned", "sent"
DOWNLOAD, INSTALL, REBOOT, TRIAL = m.PHASE_DOWNLOAD, m.PHASE_INSTALL, m.PHASE_REBOOT, m.PHASE_TRIAL
SOAKING, SUCCEEDED, FAILED = "soaking", "succeeded", "failed"
CANCELLED, SKIPPED, EXCUSED = "cancelled", "skipped", "excused"
# RolledBack by resets the board cannot explain: not a failure on its own, a halt once
# [halt] unexplained_failures chargers of a cohort report it (docs/mqtt-api.md).
UNEXPLAINED = "unexplained"
FINAL = (SUCCEEDED, FAILED, CANCELLED, SKIPPED, EXCUSED, UNEXPLAINED)
# Between job and commit: what the per-site cap counts (it covers Installing..TrialRunning).
IN_FLIGHT = (SENT, DOWNLOAD, INSTALL, REBOOT, TRIAL)
BEFORE_INSTALL = (SENT, DOWNLOAD)  # the agent still honours a cancel

# Rollout states.
AWAITING, RUNNING, PAUSED, HALTED, ABORTED, DONE = (
    "awaiting-approval",
    "running",
    "paused",
    "halted",
    "aborted",
    "done",
)
ACTIVE = (AWAITING, RUNNING, PAUSED, HALTED)


def _j(value):
    return json.dumps(value, sort_keys=True)


# --- events -----------------------------------------------------------------------------------


def apply_event(conn, ev):
    """ev: {id, ts, rollout, kind, actor, device_id, data (dict)}."""
    handler = _EVENTS.get(ev["kind"])
    if handler is not None:
        handler(conn, ev, ev["data"])


def _rollout(conn, name):
    return conn.execute(sa.select(rollouts).where(rollouts.c.name == name)).mappings().first()


def _set_rollout(conn, name, ts, **values):
    values["updated"] = ts
    conn.execute(rollouts.update().where(rollouts.c.name == name).values(**values))


def _set_target(conn, rollout, device, **values):
    conn.execute(
        targets.update()
        .where(targets.c.rollout == rollout, targets.c.device_id == device)
        .values(**values)
    )


def _created(conn, ev, data):
    state = AWAITING if data.get("approve_start") else RUNNING
    conn.execute(
        rollouts.insert().values(
            name=ev["rollout"],
            state=state,
            spec=_j(data["spec"]),
            release=_j(data["release"]),
            wave=-1,
            waves=data["waves"],
            wave_released_at=None,
            halts="[]",
            approvals="[]",
            needs_approval="start" if data.get("approve_start") else None,
            created=ev["ts"],
            updated=ev["ts"],
        )
    )
    rows = [_target_row(ev["rollout"], d, w, c, s) for d, w, c, s in data["plan"]]
    if rows:
        conn.execute(targets.insert(), rows)
    skipped = [
        _target_row(ev["rollout"], d, -1, c, s, SKIPPED, why) for d, c, s, why in data["skipped"]
    ]
    if skipped:
        conn.execute(targets.insert(), skipped)


def _target_row(rollout, device, wave, cohort, site, state=PLANNED, reason=None):
    return {
        "rollout": rollout,
        "device_id": device,
        "wave": wave,
        "cohort": cohort,
        "site": site,
        "job_id": None,
        "state": state,
        "phase_since": None,
        "last_seq": None,
        "sent_at": None,
        "install_at": None,
        "committed_at": None,
        "cancel_sent": False,
        "result": None,
        "reason": reason,
        "downloaded": None,
    }


def _approved(conn, ev, data):
    row = _rollout(conn, ev["rollout"])
    approvals = json.loads(row["approvals"]) + [data["gate"]]
    values = {"approvals": _j(approvals)}
    if row["needs_approval"] == data["gate"]:
        values["needs_approval"] = None
    if row["state"] == AWAITING and data["gate"] == "start":
        values["state"] = RUNNING
    _set_rollout(conn, ev["rollout"], ev["ts"], **values)


def _needs_approval(conn, ev, data):
    _set_rollout(conn, ev["rollout"], ev["ts"], needs_approval=data["gate"])


def _wave_released(conn, ev, data):
    _set_rollout(conn, ev["rollout"], ev["ts"], wave=data["wave"], wave_released_at=ev["ts"])


def target_event_effect(ev):
    """The values a target-level event sets (live and in rebuild)."""
    data = ev["data"]
    if ev["kind"] == "job-sent":
        return {
            "state": SENT,
            "job_id": data["job_id"],
            "sent_at": ev["ts"],
            "phase_since": ev["ts"],
            "install_at": data.get("install_at"),
        }
    state = {"target-skipped": SKIPPED, "target-failed": FAILED, "target-succeeded": SUCCEEDED}
    return {"state": state[ev["kind"]], "result": data.get("result"), "reason": data.get("why")}


def _target_event(conn, ev, data):
    _set_target(conn, ev["rollout"], ev["device_id"], **target_event_effect(ev))


def _target_added(conn, ev, data):
    row = _target_row(ev["rollout"], ev["device_id"], data["wave"], data["cohort"], data["site"])
    conn.execute(targets.insert().values(**row))


def _halted(conn, ev, data):
    row = _rollout(conn, ev["rollout"])
    halts = json.loads(row["halts"]) + [dict(data, ts=ev["ts"], event=ev["id"])]
    values = {"halts": _j(halts)}
    if data["scope"] == "fleet" or _every_cohort_halted(conn, ev["rollout"], halts):
        values["state"] = HALTED  # nothing of the rollout runs on: say so, as a fleet halt does
    _set_rollout(conn, ev["rollout"], ev["ts"], **values)


def _every_cohort_halted(conn, rollout, halts):
    halted = {h.get("cohort") for h in halts if not h.get("lifted")}
    q = sa.select(targets.c.cohort).where(targets.c.rollout == rollout).distinct()
    cohorts = {c for (c,) in conn.execute(q).all()}
    return bool(cohorts) and cohorts <= halted


def _cancel_sent(conn, ev, data):
    conn.execute(
        targets.update()
        .where(targets.c.rollout == ev["rollout"], targets.c.device_id.in_(data["devices"]))
        .values(cancel_sent=True)
    )


def _state(state):
    def handler(conn, ev, data):
        _set_rollout(conn, ev["rollout"], ev["ts"], state=state)

    return handler


def _resumed(conn, ev, data):
    """Lift the halt of one cohort (or every halt): it stays in the list, marked lifted, with
    the counts the operator saw when lifting it, so only failures after it count again."""
    row = _rollout(conn, ev["rollout"])
    cohort, seen = data.get("cohort"), data.get("acknowledged") or {}
    halts = json.loads(row["halts"])
    for h in halts:
        if not h.get("lifted") and (cohort is None or h.get("cohort") == cohort):
            h["lifted"] = ev["ts"]
            h["acknowledged"] = seen.get(h.get("cohort") or FLEET) or {}
    _set_rollout(conn, ev["rollout"], ev["ts"], state=RUNNING, halts=_j(halts))


FLEET = "*"  # the key of fleet-wide counts


def active_halts(rollout):
    return [h for h in rollout["halts"] if not h.get("lifted")]


def acknowledged(rollout):
    """{cohort (None: fleet-wide): {"failed", "finished", "unexplained"}} already weighed by
    an operator who lifted a halt; the halt rules count what comes after."""
    out = {}
    for h in rollout["halts"]:
        if h.get("lifted"):
            out[h.get("cohort")] = h.get("acknowledged") or {}
    return out


def tally(conn, name):
    """{cohort: {"failed", "finished", "unexplained"}} of a rollout's finished targets."""
    q = sa.select(targets.c.cohort, targets.c.state, sa.func.count()).where(
        targets.c.rollout == name, targets.c.state.in_((FAILED, SUCCEEDED, UNEXPLAINED))
    )
    counts = {}
    for cohort, state, n in conn.execute(q.group_by(targets.c.cohort, targets.c.state)).all():
        c = counts.setdefault(cohort, {"failed": 0, "finished": 0, "unexplained": 0})
        c["failed"] += n if state == FAILED else 0
        c["unexplained"] += n if state == UNEXPLAINED else 0
        c["finished"] += n
    return counts


_EVENTS = {
    "created": _created,
    "approved": _approved,
    "needs-approval": _needs_approval,
    "wave-released": _wave_released,
    "job-sent": _target_event,
    "target-added": _target_added,
    "target-skipped": _target_event,
    "target-failed": _target_event,
    "target-succeeded": _target_event,
    "halted": _halted,
    "cancel-sent": _cancel_sent,
    "paused": _state(PAUSED),
    "resumed": _resumed,
    "aborted": _state(ABORTED),
    "done": _state(DONE),
}


# --- device logs ---------------------------------------------------------------------------


def status_effect(target, st, received):
    """The target's new values after status `st` (parsed, with seq), or None."""
    if target["state"] in FINAL or (target["last_seq"] or -1) >= st["seq"]:
        return None
    values = {"last_seq": st["seq"]}
    if st.get("downloaded") is not None:
        values["downloaded"] = st["downloaded"]
    status, reason = st["status"], st["reason"]
    new = None
    if status == m.COMMITTED:
        new = SOAKING
        values["committed_at"] = received
    elif status == m.ROLLED_BACK and not m.rollback_counts(reason, st.get("cause")):
        # A power cut is the site's fault: excused. Resets nobody can explain: on watch.
        site = m.rollback_blame(st.get("cause"), reason) == m.BLAME_SITE
        new, values["result"] = EXCUSED if site else UNEXPLAINED, status
        values["reason"] = _why(st)
    elif m.is_failure(status, reason, st.get("cause")):
        new, values["result"] = FAILED, status
        values["reason"] = _why(st)
    elif status == m.IDLE:
        if reason == m.REASON_CANCELLED:
            new = CANCELLED
        elif reason in (m.REASON_WRONG_MODEL, m.REASON_MALFORMED_JOB):
            new, values["result"], values["reason"] = FAILED, "Refused", _why(st)
    else:
        new = m.phase_of(status)
        if new == m.PHASE_DONE:
            new = None
    if new is not None and new != target["state"]:
        values["state"] = new
        values["phase_since"] = received
    elif status == m.INSTALL_SCHEDULED and reason == m.REASON_SESSION:
        values["phase_since"] = received  # the agent defers for a session: alive, not silent
    return values


def _why(st):
    parts = [p for p in (st.get("cause"), st.get("reason"), st.get("check"), st.get("detail")) if p]
    return "; ".join(parts) or st["status"]


def health_effect(target, h):
    """A regression while soaking fails the target."""
    if target["state"] != SOAKING or h["verdict"] == "pass" or h["phase"] != "observation":
        return None
    failed = ", ".join(h["failed"]) or "observation"
    return {"state": FAILED, "result": "Regression", "reason": "regression: %s" % failed}


TARGET_KINDS = ("job-sent", "target-failed", "target-succeeded", "target-skipped")


def rebuild(conn):
    """Drop the projection and fold it again from the logs: rollout-level events in log
    order, then each target's own events, statuses and health rounds in the order the
    controller saw them (by time; at equal times a device's message first, as the controller
    ingests before it decides)."""
    conn.execute(targets.delete())
    conn.execute(rollouts.delete())
    happenings, job_of = {}, {}
    for row in conn.execute(sa.select(events).order_by(events.c.id)).mappings():
        ev = dict(row, data=json.loads(row["data"]))
        if ev["kind"] in TARGET_KINDS:
            key = (ev["rollout"], ev["device_id"])
            happenings.setdefault(key, []).append((ev["ts"], 1, ev["id"], "event", ev))
            if ev["kind"] == "job-sent":
                job_of[ev["data"]["job_id"]] = key
        else:
            apply_event(conn, ev)
    for st in conn.execute(sa.select(statuses)).mappings():
        key = job_of.get(st["job_id"])
        if key is not None and key[1] == st["device_id"]:
            st = dict(st, check=st["check_name"], detail=None)
            happenings[key].append((st["received"], 0, st["seq"], "status", st))
    for h in conn.execute(sa.select(health)).mappings():
        key = job_of.get(h["job_id"])
        if key is not None and key[1] == h["device_id"]:
            h = dict(h, failed=json.loads(h["failed"]))
            happenings[key].append((h["received"], 0, h["ts"], "health", h))
    rows = {
        (r["rollout"], r["device_id"]): dict(r) for r in conn.execute(sa.select(targets)).mappings()
    }
    for key, items in happenings.items():
        target = rows[key]
        for when, _, _, kind, item in sorted(items, key=lambda x: x[:3]):
            if kind == "event":
                values = target_event_effect(item)
            elif kind == "status":
                values = status_effect(target, item, when)
            else:
                values = health_effect(target, item)
            if values:
                target.update(values)
        _set_target(
            conn,
            key[0],
            key[1],
            **{k: v for k, v in target.items() if k not in ("rollout", "device_id")},
        )
