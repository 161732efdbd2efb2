"""Halts: a bad release stops in the pilot, fast, and publishes nothing after; a silent
charger fails at its phase timeout; a rolled-back version is never offered again."""

from agent.core import messages as m
from fleet import projection as pj
from fleet.cli import status_text
from tests.fleet.conftest import make_release, open_store, serve_release, wait_until
from tests.fleet.helpers import Observer, run_cli, sim_fleet, write_rollout, write_sites

MODELS = [("AC22", "C"), ("AC22", "D")]
TYPES = ("workplace", "depot", "public")


def _sites(n):
    return [("site-%03d" % i, TYPES[i % 3]) for i in range(n)]


def _crossing_status(store, devices, limit):
    """The failure status of these chargers that reached the count `limit`."""
    import sqlalchemy as sa

    from fleet.schema import statuses

    q = sa.select(statuses).where(
        statuses.c.device_id.in_(devices), statuses.c.status.in_(m.FAILURE_STATUSES)
    )
    with store.engine.connect() as c:
        rows = c.execute(q.order_by(statuses.c.received)).mappings().all()
    return rows[limit - 1]


def test_bad_release_10k_chargers_stops_at_pilot_plus_cap(
    tmp_path, broker, kit, images, controller
):
    """A 100% bad release (every trial fails) on 10,000 simulated chargers over 400 sites:
    at most pilot + the in-flight cap ever get it; the halt (event and cancels) follows the
    crossing status within 30 s; no job is published after the halt."""
    n, nsites = 10000, 400
    url = serve_release(images, make_release(kit, "6.6.6"))
    sites = _sites(nsites)
    sites_file = write_sites(str(tmp_path / "sites.toml"), [(s, t, "UTC") for s, t in sites])
    spec = write_rollout(
        str(tmp_path / "bad.toml"), "bad-666", url, kit.root_path, sites_file, pilot={"per_cell": 2}
    )
    store = open_store(str(tmp_path / "fleet.db"))
    observer = Observer(broker)

    def profile(i, model, hw):
        # A third of the chargers are on slow links: still downloading when the halt comes.
        return "fail-trial:charging-session" + ("+slow-link" if i % 3 == 0 else "")

    try:
        with sim_fleet(broker, n, MODELS, sites, profile, timing={"slow_download_s": 3.0}):
            controller(store, broker.settings(), tick_s=0.3)
            wait_until(lambda: len(store.inventory()) == n, 90, "10,000 inventory rows", poll=0.5)
            code, out = run_cli("--db", str(tmp_path / "fleet.db"), "rollout", "start", spec)
            assert code == 0, out
            wait_until(
                lambda: len(store.rollout("bad-666")["halts"]) >= 2,
                60,
                "both halts",
                explain=lambda: status_text(store, "bad-666"),
            )
            # Every charger that got the job has finished (failed or cancelled).
            wait_until(
                lambda: all(
                    t["state"] in pj.FINAL or t["state"] == pj.PLANNED
                    for t in store.targets("bad-666")
                ),
                60,
                "pilot settled",
                explain=lambda: status_text(store, "bad-666"),
            )
            targets = store.targets("bad-666")
            pilot = [t for t in targets if t["wave"] == 0]
            cap = max(1, int(0.25 * n / nsites))
            jobs = observer.of("job")
            reached = {d for _, _, d, _ in jobs}
            assert len(reached) <= len(pilot) + cap, (len(reached), len(pilot), cap)
            assert len(pilot) == 12  # 2 per cell: 2 revisions x 3 site types x 1 version
            events = store.events("bad-666")
            for halt in [e for e in events if e["kind"] == "halted"]:
                cohort = halt["data"]["cohort"]
                assert halt["data"]["check"] == "count"
                members = [t["device_id"] for t in targets if cohort in (None, t["cohort"])]
                crossing = _crossing_status(store, members, 1 if cohort else 10)
                assert halt["ts"] - crossing["received"] <= 30
                cancels = [c for c in observer.of("cancel") if c[2] in members]
                assert all(c[0] - crossing["received"] <= 30 for c in cancels)
                late = [j for j in jobs if j[2] in members and j[0] > halt["ts"]]
                assert late == []
                later = [
                    e
                    for e in events
                    if e["kind"] == "job-sent"
                    and e["id"] > halt["id"]
                    and e["device_id"] in members
                ]
                assert later == []
            assert any(t["state"] == pj.CANCELLED for t in pilot), "slow pilots were cancelled"
            # Stopped: the fleet-wide rule halted the rollout, or every cohort is halted (which
            # of the two comes first depends on the order the statuses arrive: either way the
            # rollout reads `halted`), or the pilot gate waits for an operator.
            final = store.rollout("bad-666")
            halted = {h.get("cohort") for h in final["halts"]}
            if {t["cohort"] for t in targets} <= halted:
                assert final["state"] == pj.HALTED, final
            assert final["needs_approval"] or final["state"] == pj.HALTED, final
            assert not any(t["state"] != pj.PLANNED for t in targets if t["wave"] > 0)
    finally:
        observer.close()
