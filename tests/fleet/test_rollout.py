"""End-to-end rollouts: live mosquitto, a real database, simulated chargers speaking the
agent's MQTT API, and `charger-fleet` as an operator runs it."""

from fleet import projection as pj
from fleet.cli import status_text
from tests.fleet.conftest import make_release, open_store, serve_release, wait_until
from tests.fleet.helpers import run_cli, sim_fleet, write_rollout, write_sites

MODELS = [("AC22", "C"), ("AC22", "D")]


def _sites(n):
    return [("site-%02d" % i, ("workplace", "depot", "public")[i % 3]) for i in range(n)]


def test_good_release_walks_pilot_waves_done(tmp_path, broker, kit, images, db_url, controller):
    url = serve_release(images, make_release(kit, "1.1.0"))
    sites = _sites(8)
    sites_file = write_sites(str(tmp_path / "sites.toml"), [(s, t, "UTC") for s, t in sites])
    spec = write_rollout(str(tmp_path / "r.toml"), "good-110", url, kit.root_path, sites_file)
    store = open_store(db_url)
    with sim_fleet(broker, 40, MODELS, sites) as sim:
        ctl = controller(store, broker.settings())
        wait_until(lambda: len(store.inventory()) == 40, 20, "40 inventory rows")
        code, out = run_cli("--db", db_url, "rollout", "plan", spec)
        assert code == 0, out
        assert "pilot covers 6 of 6 matrix cells" in out
        code, out = run_cli("--db", db_url, "rollout", "start", spec)
        assert code == 0, out
        wait_until(
            lambda: store.rollout("good-110")["state"] == pj.DONE,
            60,
            "rollout done",
            explain=lambda: status_text(store, "good-110"),
        )
        del ctl
        targets = store.targets("good-110")
        assert {t["state"] for t in targets} == {pj.SUCCEEDED}
        waves = sorted({t["wave"] for t in targets})
        assert waves == [0, 1, 2]
        assert all(len(c.jobs) == 1 for c in sim.chargers.values())
        kinds = [e["kind"] for e in store.events("good-110")]
        assert kinds.index("wave-released") < kinds.index("done")
        wait_until(
            lambda: all(r["version"] == "1.1.0" for r in store.inventory()),
            20,
            "inventory on 1.1.0",
        )
    code, out = run_cli("--db", db_url, "matrix")
    assert code == 0 and "40 chargers in" in out
