"""Rollout scenarios on live mosquitto and a real database: a release that fails on one
hardware revision halts only that cohort (SQLite and PostgreSQL agree, and the projection
rebuilds from the log); a silent charger fails at its phase timeout; a rolled-back version is
never offered again; peak hours and the per-site cap hold (audited from the event log)."""

import datetime
import re
import zoneinfo

import sqlalchemy as sa

from agent.core import messages as m
from fleet import projection as pj
from fleet.cli import status_text
from fleet.schema import rollouts, statuses, targets
from fleet.spec import load_sites
from fleet.windows import in_peak
from tests.fleet.conftest import make_release, open_store, serve_release, wait_until
from tests.fleet.helpers import Observer, run_cli, sim_fleet, write_rollout, write_sites

MODELS = [("AC22", "C"), ("AC22", "D")]
TYPES = ("workplace", "depot", "public")


def _sites(n):
    return [("site-%02d" % i, TYPES[i % 3]) for i in range(n)]


def _outcome(store, name):
    r = store.rollout(name)
    per_device = sorted(
        (t["device_id"].split("-", 1)[1], t["wave"], t["state"], t["result"])
        for t in store.targets(name)
    )
    halts = sorted((h["scope"], h["cohort"], h["check"]) for h in r["halts"])
    return r["state"], halts, per_device


def _projection(store):
    with store.engine.connect() as c:
        rows = [dict(r) for r in c.execute(sa.select(rollouts)).mappings()]
        for r in rows:
            r.pop("updated")
        cols = (
            "rollout",
            "device_id",
            "wave",
            "cohort",
            "site",
            "job_id",
            "state",
            "result",
            "cancel_sent",
            "install_at",
            "sent_at",
            "committed_at",
        )
        ts = sorted(tuple(r[c] for c in cols) for r in c.execute(sa.select(targets)).mappings())
    return rows, ts


def _rev_d_bad(db, tmp_path, broker, kit, url, sites, sites_file, controller):
    spec = write_rollout(
        str(tmp_path / "r.toml"),
        "rev-d-bad",
        url,
        kit.root_path,
        sites_file,
        halt={"other_cohorts": "continue"},
    )
    store = open_store(db)

    def profile(i, model, hw):
        return "fail-trial:charging-session" if hw == "D" else "good"

    with sim_fleet(broker, 36, MODELS, sites, profile, prefix_id="revd") as sim:
        ctl = controller(store, broker.settings())
        wait_until(lambda: len(store.inventory()) == 36, 20, "inventory")
        code, out = run_cli("--db", db, "rollout", "start", spec)
        assert code == 0, out
        wait_until(
            lambda: store.rollout("rev-d-bad")["state"] == pj.DONE,
            60,
            "done",
            explain=lambda: status_text(store, "rev-d-bad"),
        )
        ctl.close()
        text = status_text(store, "rev-d-bad")
        assert re.search(r"HALT cohort AC22/D/1.0.0 count: \d failed \(limit 1\)", text), text
        assert "trial failed; charging-session" in text, text
        d_jobs = [c for c in sim.chargers.values() if c.hw == "D" and c.jobs]
        assert len(d_jobs) <= 3  # only rev D's pilot chargers (one per site type)
        assert all(c.version == "2.1.0" for c in sim.chargers.values() if c.hw == "C")
        code, out = run_cli("--db", db, "matrix", "--rollout", "rev-d-bad")
        assert code == 0 and "HALT" in out and "36 chargers" in out, out
        before = _projection(store)
        code, out = run_cli("--db", db, "rebuild")
        assert code == 0, out
        assert _projection(store) == before
    outcome = _outcome(store, "rev-d-bad")
    store.engine.dispose()
    return outcome


def test_bad_revision_halts_only_its_cohort_same_on_sqlite_and_postgresql(
    tmp_path, broker, kit, images, controller, pg_url
):
    """Rev D fails the charging-session check: its cohort halts in the pilot with the reason,
    rev C walks pilot -> waves -> done. Both databases give the same outcome, and the
    projection rebuilt from the event log equals the live one."""
    url = serve_release(images, make_release(kit, "2.1.0"))
    sites = _sites(9)
    sites_file = write_sites(str(tmp_path / "sites.toml"), [(s, t, "UTC") for s, t in sites])
    outcomes = [
        _rev_d_bad(db, tmp_path, broker, kit, url, sites, sites_file, controller)
        for db in (str(tmp_path / "fleet.db"), pg_url)
    ]
    assert outcomes[0] == outcomes[1]


def test_silent_charger_fails_after_its_phase_timeout(tmp_path, broker, kit, images, controller):
    url = serve_release(images, make_release(kit, "2.2.0"))
    sites = _sites(6)
    spec = write_rollout(
        str(tmp_path / "r.toml"),
        "silent",
        url,
        kit.root_path,
        timeouts={"reboot": 2},
        halt={"pilot_failures": 5, "wave_failures": 5},
    )
    store = open_store(str(tmp_path / "fleet.db"))

    def profile(i, model, hw):
        return "silent-after-reboot" if i == 0 else "good"

    with sim_fleet(broker, 12, MODELS, sites, profile) as sim:
        controller(store, broker.settings())
        wait_until(lambda: len(store.inventory()) == 12, 20, "inventory")
        assert run_cli("--db", str(tmp_path / "fleet.db"), "rollout", "start", spec)[0] == 0
        silent = [c.id for c in sim.chargers.values() if c.profile != "good"][0]
        t = wait_until(
            lambda: [
                t
                for t in store.targets("silent")
                if t["device_id"] == silent and t["state"] == pj.FAILED
            ],
            30,
            "the silent charger failed",
        )[0]
        assert "silent" in t["reason"] and "reboot phase" in t["reason"], t["reason"]
        with store.engine.connect() as c:
            rebooting = c.execute(
                sa.select(statuses.c.received).where(
                    statuses.c.device_id == silent, statuses.c.status == m.INSTALL_REBOOTING
                )
            ).scalar()
        failed = [e for e in store.events("silent", ["target-failed"]) if e["device_id"] == silent][
            0
        ]
        assert 2 <= failed["ts"] - rebooting <= 2 + 60


def test_soak_regression_fails_offline_is_silent_a_session_only_defers(
    tmp_path, broker, kit, images, controller
):
    """Committed is not success: a charger whose observation finds a regression during its
    soak fails. A charger that never answers (offline) fails at its download timeout. A
    charger with a session at install time defers (the agent's rule) and still succeeds."""
    db = str(tmp_path / "fleet.db")
    url = serve_release(images, make_release(kit, "2.3.0"))
    spec = write_rollout(
        str(tmp_path / "r.toml"),
        "soak",
        url,
        kit.root_path,
        pilot={"soak": 1.5},
        waves={"sizes": ["rest"], "soak": 1.5},
        timeouts={"download": 3},
        halt={"pilot_failures": 5, "wave_failures": 5, "other_cohorts": "continue"},
    )
    store = open_store(db)
    odd = {0: "regress", 1: "offline", 2: "charging"}

    def profile(i, model, hw):
        return odd.get(i, "good")

    with sim_fleet(broker, 12, MODELS, _sites(6), profile, prefix_id="soak") as sim:
        controller(store, broker.settings())
        wait_until(lambda: len(store.inventory()) == 12, 20, "inventory")
        assert run_cli("--db", db, "rollout", "start", spec)[0] == 0
        wait_until(
            lambda: store.rollout("soak")["state"] == pj.DONE,
            60,
            "done",
            explain=lambda: status_text(store, "soak"),
        )
        by_profile = {sim.chargers[t["device_id"]].profile: t for t in store.targets("soak")}
        regress = by_profile["regress"]
        assert regress["state"] == pj.FAILED and regress["result"] == "Regression", regress
        assert regress["committed_at"] is not None and "regression: alarms" in regress["reason"]
        offline = by_profile["offline"]
        assert offline["state"] == pj.FAILED and offline["result"] == "Timeout"
        assert "download phase" in offline["reason"], offline["reason"]
        charging = by_profile["charging"]
        assert charging["state"] == pj.SUCCEEDED
        with store.engine.connect() as c:
            deferred = c.execute(
                sa.select(statuses.c.reason).where(
                    statuses.c.device_id == charging["device_id"],
                    statuses.c.status == m.INSTALL_SCHEDULED,
                )
            ).all()
        assert (m.REASON_SESSION,) in deferred
        states = sorted(t["state"] for t in store.targets("soak"))
        assert states == [pj.FAILED] * 2 + [pj.SUCCEEDED] * 10


def test_never_reoffers_a_version_a_charger_rolled_back_from(
    tmp_path, broker, kit, images, controller
):
    url = serve_release(images, make_release(kit, "3.0.0"))
    sites = _sites(6)
    spec = write_rollout(str(tmp_path / "r.toml"), "again", url, kit.root_path)
    store = open_store(str(tmp_path / "fleet.db"))
    observer = Observer(broker)
    try:
        with sim_fleet(broker, 24, MODELS, sites) as sim:
            burnt = sorted(sim.chargers)[:3]
            for device in burnt:  # these rolled back from 3.0.0 in an earlier rollout
                c = sim.chargers[device]
                c.rollbacks = [
                    {
                        "id": "old:%s" % device,
                        "version": "3.0.0",
                        "result": "RolledBack",
                        "reason": "trial failed",
                    }
                ]
                sim._publish(c, m.INVENTORY, c.inventory(sim.clock()), retain=True)
            controller(store, broker.settings())
            wait_until(
                lambda: sum(1 for r in store.inventory() if r["rollbacks"]) == 3,
                20,
                "rollbacks in the inventory",
            )
            code, out = run_cli("--db", str(tmp_path / "fleet.db"), "rollout", "plan", spec)
            assert "skipped 3: rolled back from 3.0.0 before: never offered again" in out, out
            assert run_cli("--db", str(tmp_path / "fleet.db"), "rollout", "start", spec)[0] == 0
            wait_until(
                lambda: store.rollout("again")["state"] == pj.DONE,
                60,
                "done",
                explain=lambda: status_text(store, "again"),
            )
            assert not [j for j in observer.of("job") if j[2] in burnt]
            assert all(sim.chargers[d].jobs == [] for d in burnt)
            code, out = run_cli("--db", str(tmp_path / "fleet.db"), "matrix", "--json")
            rows = __import__("json").loads(out)
            assert sum(r["rollbacks"] for r in rows) == 3
            assert sum(r["skipped"] for r in rows) == 3
    finally:
        observer.close()


def test_rollback_cause_decides_the_halt_power_loss_is_not_the_release(
    tmp_path, broker, kit, images, controller
):
    """Rev C's chargers lose power through their trials (RolledBack, cause power-loss): not
    the release's fault, no halt, waves go on, and a later plan offers 2.5.0 to them again.
    Rev D's boards roll back after resets they cannot explain (cause unexplained-resets):
    one or two would not halt, the pilot's three do ([halt] unexplained_failures = 3)."""
    db = str(tmp_path / "fleet.db")
    url = serve_release(images, make_release(kit, "2.5.0"))
    spec = write_rollout(
        str(tmp_path / "r.toml"), "causes", url, kit.root_path, halt={"other_cohorts": "continue"}
    )
    store = open_store(db)

    def profile(i, model, hw):
        return "power-loss" if hw == "C" else "unexplained-resets"

    with sim_fleet(broker, 36, MODELS, _sites(9), profile, prefix_id="cause") as sim:
        controller(store, broker.settings())
        wait_until(lambda: len(store.inventory()) == 36, 20, "inventory")
        assert run_cli("--db", db, "rollout", "start", spec)[0] == 0
        wait_until(
            lambda: store.rollout("causes")["state"] == pj.DONE,
            60,
            "done",
            explain=lambda: status_text(store, "causes"),
        )
        r = store.rollout("causes")
        assert [(h["cohort"], h["check"]) for h in r["halts"]] == [
            ("AC22/D/1.0.0", "unexplained-resets")
        ], r["halts"]
        assert "3 rolled back after resets of unknown cause" in r["halts"][0]["evidence"]
        states = {}
        for t in store.targets("causes"):
            states.setdefault((t["cohort"][5], t["state"]), []).append(t)
        assert sorted(states) == [("C", pj.EXCUSED), ("D", pj.PLANNED), ("D", pj.UNEXPLAINED)]
        assert len(states[("C", pj.EXCUSED)]) == 18  # every wave ran: nothing halted rev C
        assert "power-loss" in states[("C", pj.EXCUSED)][0]["reason"]
        assert all(c.jobs for c in sim.chargers.values() if c.hw == "C")
        assert len([c for c in sim.chargers.values() if c.hw == "D" and c.jobs]) == 3
        wait_until(
            lambda: sum(1 for x in store.inventory() if x["power_loss_rollbacks"]) == 18,
            20,
            "the inventory knows the power-loss rollbacks",
        )
        code, out = run_cli("--db", db, "matrix", "--json")
        rows = __import__("json").loads(out)
        c_rows = [x for x in rows if x["hardware_revision"] == "C"]
        assert sum(x["excused"] for x in c_rows) == 18
        assert all(x["rolled_back_from"] == ["2.5.0 (power-loss)"] for x in c_rows)
        # A second rollout of the same release: rev C may have it again, rev D's three not.
        again = write_rollout(str(tmp_path / "again.toml"), "causes-2", url, kit.root_path)
        code, out = run_cli("--db", db, "rollout", "plan", again)
        assert code == 0 and "skipped 3: rolled back from 2.5.0 before" in out, out
        assert "36 chargers" not in out and "33 chargers" in out, out


def _fake_now(tz, hhmm_ss):
    """Epoch seconds of today's HH:MM:SS in tz (the simulated fleet and controller run on a
    shifted clock so a window boundary is seconds away)."""
    zone = zoneinfo.ZoneInfo(tz)
    today = datetime.datetime.now(zone).date()
    h, mi, s = (int(x) for x in hhmm_ss.split(":"))
    return datetime.datetime(today.year, today.month, today.day, h, mi, s, tzinfo=zone).timestamp()


def test_no_install_in_peak_hours_and_site_cap_held_audited_from_log(
    tmp_path, broker, kit, images, controller
):
    """Berlin workplaces are busy 05:00-07:00 and the clock says 06:59:56 there; New York
    depots are busy 22:00-06:00 (it is 00:59 there); Tokyo publics have no peak. No install_at
    and no install falls in a peak, and no site ever has more than 25% of its chargers
    between job and commit (cap 2 of 10), as the event log and statuses show."""
    from fleet.simulator import Simulator, make_fleet

    url = serve_release(images, make_release(kit, "4.0.0"))
    places = [
        ("ber-1", "workplace", "Europe/Berlin"),
        ("ber-2", "workplace", "Europe/Berlin"),
        ("nyc-1", "depot", "America/New_York"),
        ("tyo-1", "public", "Asia/Tokyo"),
    ]
    sites_file = write_sites(
        str(tmp_path / "sites.toml"),
        places,
        {"workplace": ["05:00-07:00"], "depot": ["22:00-06:00"]},
    )
    sites = load_sites(sites_file)
    shift = _fake_now("Europe/Berlin", "06:59:56") - __import__("time").time()

    def clock():
        return __import__("time").time() + shift

    spec = write_rollout(
        str(tmp_path / "r.toml"),
        "peaks",
        url,
        kit.root_path,
        sites_file,
        pilot={"exclude_cells": ["AC22/C/1.0.0/fleet/depot"]},
        waves={"sizes": ["rest"]},
    )
    store = open_store(str(tmp_path / "fleet.db"))
    offsets = {
        s: __import__("fleet.windows").windows.local_offset_s(clock(), tz) for s, _, tz in places
    }
    chargers = make_fleet(
        40, [("AC22", "C")], [(s, t) for s, t, _ in places], offsets=offsets, prefix_id="pk"
    )
    sim = Simulator(
        broker.settings(),
        chargers,
        clock=clock,
        timing={"download_s": 0.05, "install_s": 0.3, "reboot_s": 0.2, "trial_s": 0.2},
    ).start()
    try:
        controller(store, broker.settings(), clock=clock)
        wait_until(lambda: len(store.inventory()) == 40, 20, "inventory")
        assert run_cli("--db", str(tmp_path / "fleet.db"), "rollout", "start", spec)[0] == 0

        def done():
            rows = store.targets("peaks")
            return all(t["state"] == pj.SUCCEEDED for t in rows if t["site"] != "nyc-1")

        wait_until(
            done,
            60,
            "every Berlin and Tokyo charger committed and soaked",
            explain=lambda: status_text(store, "peaks"),
        )
        sent = store.events("peaks", ["job-sent"])
        # New York's jobs wait for its window: only its cap (2 of 10) are out at once.
        assert len(sent) == 32
        for e in sent:
            assert not in_peak(e["data"]["install_at"], e["data"]["site"], sites), e
            assert e["data"]["install_at"] >= int(e["ts"]) - 1
        nyc = [e for e in sent if e["data"]["site"] == "nyc-1"]
        assert len(nyc) == 2 and all(e["data"]["install_at"] - e["ts"] > 3600 for e in nyc)
        for c in sim.chargers.values():
            for _, at in c.installs:
                assert not in_peak(at, c.site, sites), (c.id, at)
        assert any(c.installs for c in sim.chargers.values() if c.site.startswith("ber"))
        # Site cap, audited: in flight from job-sent until a status ends the journey.
        with store.engine.connect() as conn:
            ends = {}
            for job_id, received in conn.execute(
                sa.select(statuses.c.job_id, statuses.c.received).where(
                    statuses.c.status.in_(m.FAILURE_STATUSES + (m.COMMITTED,))
                )
            ):
                ends[job_id] = min(received, ends.get(job_id, received))
        by_site = {}
        for e in sent:
            end = ends.get(e["data"]["job_id"], float("inf"))
            by_site.setdefault(e["data"]["site"], []).append((e["ts"], end))
        for site, spans in by_site.items():
            points = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
            level = peak = 0
            for _, d in points:
                level += d
                peak = max(peak, level)
            assert peak <= 2, (site, peak)
        assert max(len(v) for v in by_site.values()) == 10
    finally:
        sim.stop()
