"""The fleet's decisions without a broker: rollout/sites files, windows, the planner, the
schema vs its migrations, the matrix, and the controller's gates stepped on a fake clock
(approval gates, security fast track, late joiners, pause/abort) against a real database."""

import json

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from agent.core import messages as m
from fleet import matrix as mx
from fleet import planner
from fleet.controller import Controller
from fleet.errors import SpecError
from fleet.schema import metadata
from fleet.spec import duration, load_rollout, load_sites
from fleet.windows import in_peak, install_slot, off_peak
from tests.fleet.conftest import make_release, open_store
from tests.fleet.helpers import run_cli, write_rollout

T0 = 1795564800  # 2026-11-25T00:00:00Z


def test_migrations_create_exactly_the_schema(db_url):
    store = open_store(db_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_durations_and_spec_errors_name_the_key(tmp_path):
    assert duration("15m", "x") == 900 and duration(90, "x") == 90 and duration("2d", "x") == 172800
    with pytest.raises(SpecError, match=r"\[pilot\] soak"):
        write_rollout(
            str(tmp_path / "a.toml"), "a", "file:x.cub", "root.json", pilot={"soak": "soon"}
        )
        load_rollout(str(tmp_path / "a.toml"))
    (tmp_path / "b.toml").write_text(
        'name = "b"\nrelease = "file:x"\ntrust_root = "r"\nbogus = 1\n'
    )
    with pytest.raises(SpecError, match="unknown key 'bogus'"):
        load_rollout(str(tmp_path / "b.toml"))
    (tmp_path / "c.toml").write_text("name = [")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_rollout(str(tmp_path / "c.toml"))
    (tmp_path / "s.toml").write_text('[sites.x]\ntz = "Mars/Olympus"\n')
    with pytest.raises(SpecError, match="not a known time zone"):
        load_sites(str(tmp_path / "s.toml"))


def test_cli_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    code, _ = run_cli("--db", str(tmp_path / "f.db"), "rollout", "plan", str(tmp_path / "no.toml"))
    assert code == 2
    assert capsys.readouterr().err.startswith("charger-fleet: rollout file")
    code, _ = run_cli("--db", str(tmp_path / "f.db"), "rollout", "status", "nope")
    assert code == 3
    code, _ = run_cli("--db", "postgresql://nobody@127.0.0.1:1/x", "matrix")
    assert code == 75
    assert "not reachable" in capsys.readouterr().err


def test_every_help_answers_what_an_operator_asks(capsys):
    """--help of the program and of every command: what it does, its exit codes, and the
    common options accepted after the command's name too."""
    from fleet.cli import parser

    asks = {
        (): ["Exit codes", "75", "rollout approve", "--mqtt-user"],
        ("matrix",): ["--html", "rolled back from", "excused"],
        ("rollout", "plan"): ["signed header", "Exit 4", "cellular cost"],
        ("rollout", "start"): ["awaiting-approval", "Exit 4"],
        ("rollout", "status"): ["--watch", "evidence"],
        ("rollout", "pause"): ["resume"],
        ("rollout", "resume"): ["--cohort", "only failures after it"],
        ("rollout", "approve"): ["wave-N", "after-halt-N", "--gate"],
        ("rollout", "abort"): ["installing"],
        ("rollout", "events"): ["actor"],
        ("rollout", "list"): ["state"],
        ("serve",): ["--client-id", "--leave", "$share", "kill", "docs/fleet.md"],
        ("rebuild",): ["Stop `serve` first"],
    }
    for argv, words in asks.items():
        with pytest.raises(SystemExit) as e:
            parser().parse_args(list(argv) + ["--help"])
        text = capsys.readouterr().out
        assert e.value.code == 0
        for word in words:
            assert word in text, (argv, word, text)
        if argv:
            assert "--db" in text and "--by" in text, argv


def test_off_peak_windows_never_start_in_a_peak():
    assert sorted(off_peak([(7 * 60, 10 * 60), (16 * 60, 19 * 60)])) == [(600, 960), (1140, 420)]
    assert off_peak([(22 * 60, 6 * 60)]) == [(360, 1320)]
    assert off_peak([]) is None
    sites = {
        "types": {"w": [(7 * 60, 10 * 60), (16 * 60, 19 * 60)], "d": [(22 * 60, 6 * 60)]},
        "sites": {
            "a": {"tz": "Europe/Berlin", "type": "w", "uplink": "wired"},
            "b": {"tz": "America/Los_Angeles", "type": "d", "uplink": "cellular"},
        },
    }
    for site in ("a", "b"):
        for step in range(0, 2 * 86400, 600):
            slot = install_slot(site, sites, T0 + step, 900)
            assert not in_peak(slot["install_at"], site, sites)
            assert slot["install_at"] >= T0 + step
            assert slot["window"] is not None and slot["jitter_s"] <= 900
            m.job_message(
                "j",
                "https://x/y",
                "1.0.0",
                install_at=slot["install_at"],
                window=slot["window"],
                jitter_s=slot["jitter_s"],
            )


def _row(i, model="AC22", hw="C", version="1.0.0", site=None, site_type="depot", rollbacks=(),
         power_loss=(), floor=None):  # fmt: skip
    return {
        "device_id": "cp-%03d" % i,
        "model": model,
        "hardware_revision": hw,
        "version": version,
        "group": "g",
        "site": site or "s%d" % i,
        "site_type": site_type,
        "rollbacks": list(rollbacks),
        "power_loss_rollbacks": list(power_loss),
        "security_floor": floor,
        "components": {},
        "online": True,
        "last_result": None,
    }


SPEC = {
    "name": "r",
    "target": {
        "models": [],
        "hardware_revisions": [],
        "groups": [],
        "site_types": [],
        "versions": [],
        "devices": [],
        "exclude": [],
    },
    "pilot": {"per_cell": 2, "exclude_cells": []},
    "waves": {"sizes": ["10%", "rest"]},
    "halt": {
        "pilot_failures": 1,
        "wave_failures": 3,
        "fleet_failures": 10,
        "rate": 0.05,
        "min_sample": 20,
        "unexplained_failures": 3,
    },
}
RELEASE = {
    "version": "2.0.0",
    "security_version": 3,
    "compatible": [{"model": "AC22", "hardware_revisions": ["C"]}],
}


def test_pilot_covers_every_cell_one_per_site_or_says_which_cannot():
    rows = [
        _row(i, site_type=("depot", "public")[i % 2], site="s%d" % (i % 20)) for i in range(100)
    ]
    rows += [_row(200, hw="D"), _row(201, rollbacks=["2.0.0"]), _row(202, version="2.0.0")]
    rows += [_row(300, site="lonely", site_type="hub"), _row(301, site="lonely", site_type="hub")]
    plan = planner.build_plan(rows, SPEC, RELEASE)
    pilot = plan["waves"][0]
    assert len({r["site"] for r in pilot}) == len(pilot)  # at most one per site
    cells = {planner.cell_of(r) for r in pilot}
    assert cells == set(plan["cells"])  # every cell covered
    assert sum(len(w) for w in plan["waves"]) == 102  # 100 + two at "lonely"
    why = dict((d, w) for d, _, _, w in plan["skipped"])
    assert "never offered again" in why["cp-201"] and "not for AC22 rev D" in why["cp-200"]
    assert "cp-202" not in why and all(r["device_id"] != "cp-202" for w in plan["waves"] for r in w)
    assert planner.build_plan(rows, SPEC, RELEASE) == plan  # deterministic
    crowded = [_row(i, site="one", site_type=t) for i, t in enumerate(("a", "b"))]
    blocked = planner.build_plan(crowded, SPEC, RELEASE)["blocked"]
    assert len(blocked) == 1 and "every site of this cell already has one" in blocked[0][1]


def test_halt_rules_count_and_rate_after_minimum_sample():
    assert planner.crossed(1, 1, 1, 0.05, 20)[0] == "count"
    assert planner.crossed(0, 100, 1, 0.05, 20) is None
    assert planner.crossed(2, 19, 3, 0.05, 20) is None  # rate needs the sample first
    assert planner.crossed(2, 20, 3, 0.05, 20)[0] == "rate"

    def c(failed, finished, unexplained=0):
        return {"failed": failed, "finished": finished, "unexplained": unexplained}

    counts = {"A": c(1, 5), "B": c(0, 30)}
    found = planner.halts(counts, SPEC, 0, set())
    assert [(h["scope"], h["cohort"]) for h in found] == [("cohort", "A")]
    assert planner.halts(counts, SPEC, 1, set()) == []  # a wave allows 3


def test_unexplained_resets_halt_a_cohort_only_once_several_report_them():
    def c(failed, finished, unexplained=0):
        return {"failed": failed, "finished": finished, "unexplained": unexplained}

    # Two boards that cannot tell a power cut from a crash: not yet a halt, even in the pilot.
    assert planner.halts({"A": c(0, 2, 2)}, SPEC, 0, set()) == []
    found = planner.halts({"A": c(0, 3, 3), "B": c(0, 3)}, SPEC, 1, set())
    assert [(h["cohort"], h["check"]) for h in found] == [("A", "unexplained-resets")]
    assert "3 rolled back after resets of unknown cause" in found[0]["evidence"]
    # Spread thinly over many cohorts: the fleet-wide limit.
    many = {"C%d" % i: c(0, 5, 1) for i in range(10)}
    found = planner.halts(many, SPEC, 1, set())
    assert [(h["scope"], h["check"]) for h in found] == [("fleet", "unexplained-resets")]


def test_power_loss_rollback_may_be_offered_again_a_floor_above_the_release_not():
    assert planner.eligibility(SPEC, RELEASE, _row(1, power_loss=["2.0.0"])) is None
    assert "never offered again" in planner.eligibility(SPEC, RELEASE, _row(1, rollbacks=["2.0.0"]))
    why = planner.eligibility(SPEC, RELEASE, _row(1, floor=4))
    assert "below the charger's anti-rollback floor 4" in why
    assert planner.eligibility(SPEC, RELEASE, _row(1, floor=3)) is None


def test_matrix_reconciles_with_the_inventory_and_shows_components():
    rows = [_row(i, hw="CD"[i % 2], rollbacks=["1.5.0"] if i % 7 == 0 else ()) for i in range(50)]
    for r in rows[:10]:
        r["components"] = {"rootfs": "1.0.0", "mcu": "4.%d" % (r["device_id"][-1] == "1")}
        r["last_result"] = "Committed"
    cells = mx.build(rows)
    assert sum(c["chargers"] for c in cells) == 50
    assert sum(c["rollbacks"] for c in cells) == 8
    assert "components" in mx.columns(cells)
    assert "50 chargers in" in mx.to_table(cells)
    assert mx.to_csv(cells).count("\n") == len(cells) + 1
    # The versions chargers rolled back from, in every rendering (a power cut marked as such).
    rows[1]["power_loss_rollbacks"] = ["1.6.0"]
    cells = mx.build(rows)
    assert sum(c["rollbacks"] for c in cells) == 9
    table, text = mx.to_table(cells), mx.to_csv(cells)
    assert "rolled back from" in table.splitlines()[0] and "1.5.0" in table
    assert "1.6.0 (power-loss)" in text and "1.6.0 (power-loss)" in mx.to_html(cells)
    page = mx.to_html(cells)
    assert page.startswith("<!doctype html>") and "class='bar'" in page
    assert json.loads(mx.to_json(cells))[0]["model"] == "AC22"


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def _seed(store, n, now, version="1.0.0", prefix="cp"):
    batch = []
    for i in range(n):
        device = {
            "id": "%s-%03d" % (prefix, i),
            "model": "AC22",
            "hardware_revision": "C",
            "group": "g",
            "site": "s%d" % (i % 10),
            "site_type": ("a", "b")[i % 2],
        }
        boot = {"backend": "x", "booted": "A", "primary": "A", "slots": {"A": {"attempts_left": 3}}}
        row = m.inventory_message(device, boot, {"A": {"version": version}}, None, [], now)
        batch.append((m.INVENTORY, device["id"], row))
    store.ingest(batch, now)


def _report(store, rollout, device, status, seq, now, **info):
    msg = m.status_message(status, dict(info, job_id="%s:%s" % (rollout, device)), seq, now)
    store.ingest([(m.STATUS, device, msg)], now)


def _controller(store, clock):
    return Controller(store, {"host": "127.0.0.1", "port": 1}, client_id="unit", clock=clock)


def _commit_all(store, name, now, jobs, seq=1):
    for device, _ in jobs:
        _report(store, name, device, m.COMMITTED, seq, now)


def test_gates_fast_track_joiners_pause_and_abort(tmp_path, kit):
    db = str(tmp_path / "f.db")
    release = make_release(kit, "7.0.0", revisions=("C",))
    spec = write_rollout(
        str(tmp_path / "r.toml"),
        "gated",
        "file:" + release,
        kit.root_path,
        security=True,
        approval={"start": True, "above_share": 0.5},
        pilot={"per_cell": 1, "soak": 86400},
        waves={"sizes": ["25%", "rest"], "soak": 86400},
        fast_track={"pilot_soak": 60, "soak": 60},
    )
    store = open_store(db)
    clock = Clock(T0)
    _seed(store, 40, clock())
    assert run_cli("--db", db, "rollout", "start", spec)[0] == 0
    ctl = _controller(store, clock)

    def step():
        return ctl.step(store.rollout("gated"), clock())

    assert step() == ([], [])  # waits for the start approval
    assert store.rollout("gated")["needs_approval"] == "start"
    assert run_cli("--db", db, "--by", "alice", "rollout", "approve", "gated")[0] == 0
    jobs, _ = step()
    assert len(jobs) == 2  # pilot: one per cell (2 site types)
    clock.t += 10
    _commit_all(store, "gated", clock(), jobs)
    clock.t += 59
    assert step() == ([], [])  # security fast track: 60 s soak, not 86400
    clock.t += 2
    jobs, _ = step()
    wave1 = [t for t in store.targets("gated") if t["wave"] == 1]
    assert len(wave1) == 10  # 25% of the 38 after the pilot
    # Sites of 4 chargers: a cap of one job in flight per site.
    assert len(jobs) == len({t["site"] for t in wave1})
    _seed(store, 2, clock(), prefix="late")  # two chargers join the fleet
    clock.t += 1
    jobs2, _ = step()
    late = [t for t in store.targets("gated") if t["device_id"].startswith("late")]
    assert [t["wave"] for t in late] == [1, 1]  # the current wave, never the pilot
    _commit_all(store, "gated", clock(), jobs + jobs2)
    clock.t += 61
    for _ in range(5):
        more, _ = step()
        _commit_all(store, "gated", clock(), more)
        clock.t += 61
    r = store.rollout("gated")
    assert r["needs_approval"] == "wave-2", r  # above 50% of the fleet: a gate
    assert run_cli("--db", db, "rollout", "pause", "gated")[0] == 0
    assert run_cli("--db", db, "rollout", "approve", "gated")[0] == 0
    assert step()[0] == []  # paused: no jobs
    assert run_cli("--db", db, "rollout", "resume", "gated")[0] == 0
    jobs, _ = step()
    assert 0 < len(jobs) <= 10  # wave 2 released, at most one per site (cap)
    assert len({int(d[-3:]) % 10 for d, _ in jobs}) == len(jobs)
    assert run_cli("rollout", "abort", "gated", "--db", db, "--by", "bob", "--why", "test")[0] == 0
    _, cancels = step()
    assert sorted(d for d, _ in cancels) == sorted(d for d, _ in jobs)
    kinds = [(e["kind"], e["actor"]) for e in store.events("gated")]
    assert ("approved", "alice") in kinds and ("aborted", "bob") in kinds
    code, out = run_cli("--db", db, "rollout", "events", "gated")
    assert code == 0 and "cancel-sent" in out and "needs-approval" in out


def test_resume_lifts_a_cohort_halt_and_counts_only_later_failures(tmp_path, kit):
    """The pilot's one failure halts the cohort; the operator looks, resumes it, and the rules
    count anew from there: the same failure does not halt it again at the next tick, the
    wave's own failures do once they reach the wave's limit. The lifted halt survives a
    rebuild of the projection."""
    db = str(tmp_path / "f.db")
    release = make_release(kit, "7.1.0", revisions=("C",))
    spec = write_rollout(
        str(tmp_path / "r.toml"),
        "again",
        "file:" + release,
        kit.root_path,
        pilot={"per_cell": 2, "soak": 60},
        waves={"sizes": ["50%", "rest"], "soak": 60},
        halt={"pilot_failures": 1, "wave_failures": 2, "other_cohorts": "continue"},
    )
    store = open_store(db)
    clock = Clock(T0)
    _seed(store, 40, clock())
    assert run_cli("--db", db, "rollout", "start", spec)[0] == 0
    ctl = _controller(store, clock)

    def step():
        return ctl.step(store.rollout("again"), clock())

    pilot, _ = step()
    assert len(pilot) == 4
    clock.t += 5
    bad = pilot[0][0]
    _report(store, "again", bad, m.ROLLED_BACK, 1, clock(), reason=m.REASON_TRIAL_FAILED,
            check="alarms", cause=m.CAUSE_CHECK_FAILED)  # fmt: skip
    _commit_all(store, "again", clock(), pilot[1:])
    clock.t += 61
    assert step() == ([], [])
    assert [h["cohort"] for h in store.rollout("again")["halts"]] == ["AC22/C/1.0.0"]
    # its only cohort halted: the rollout reads halted, as after a fleet-wide halt
    assert {t["cohort"] for t in store.targets("again")} == {"AC22/C/1.0.0"}
    assert store.rollout("again")["state"] == "halted"
    code, _ = run_cli("--db", db, "rollout", "resume", "again", "--cohort", "AC22/D/1.0.0")
    assert code == 4  # not halted: refused, nothing recorded
    assert run_cli("--db", db, "rollout", "resume", "again", "--cohort", "AC22/C/1.0.0")[0] == 0
    clock.t += 1
    wave1, _ = step()
    assert wave1 and len(store.rollout("again")["halts"]) == 1  # no second halt for the same
    assert store.rollout("again")["state"] == "running"
    code, out = run_cli("--db", db, "rollout", "status", "again")
    assert "halt lifted cohort AC22/C/1.0.0" in out and "HALT" not in out, out
    before = store.rollout("again")["halts"]
    assert run_cli("--db", db, "rebuild")[0] == 0
    assert store.rollout("again")["halts"] == before
    clock.t += 5
    _report(store, "again", wave1[0][0], m.INSTALLATION_FAILED, 1, clock(), reason="no-space")
    clock.t += 1
    step()
    assert all(h.get("lifted") for h in store.rollout("again")["halts"])  # 1 of 2 allowed
    _report(store, "again", wave1[1][0], m.INSTALLATION_FAILED, 1, clock(), reason="no-space")
    clock.t += 1
    step()
    halts = store.rollout("again")["halts"]
    assert len(halts) == 2 and not halts[1].get("lifted") and "2 failed" in halts[1]["evidence"]
