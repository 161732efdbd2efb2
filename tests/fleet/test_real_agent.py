"""The controller against the real agent: a virtual board (hil/virtual: the agent, its boot
ROM, charging stack and safety MCU) beside simulated chargers of the same cohort. The board's
own failed trial halts the cohort in the pilot with its evidence; its inventory row carries
its site, its components and the rollback's cause, so the release is never offered to it
again; the simulated chargers of the halted cohort never get the job. Then a good release
commits and soaks on the board."""

from agent.core import messages as m
from agent.frontends.backend_sim import BackendSim
from fleet import projection as pj
from fleet.cli import status_text
from fleet.schema import statuses
from hil.fleet_demo import SITES, release, start_boards
from hil.release import ReleaseKit
from hil.services.csms import Csms
from hil.virtual.rig import HW, MODEL
from tests.fleet.conftest import open_store, wait_until
from tests.fleet.helpers import run_cli, sim_fleet, write_rollout


def test_a_real_boards_failed_trial_halts_its_cohort(tmp_path, broker, images, controller):
    kit = ReleaseKit(str(tmp_path / "kit"), MODEL, HW)
    csms, pings = Csms().start(), BackendSim(broker.settings()).start()
    boards, drivers = [], []
    db = str(tmp_path / "fleet.db")
    store = open_store(db)
    try:
        boards, drivers = start_boards(str(tmp_path), kit, broker, csms, n=1)
        site, site_type, _ = SITES[0]
        with sim_fleet(broker, 4, [(MODEL, HW)], [(site, site_type)], prefix_id="beside"):
            controller(store, broker.settings())
            wait_until(lambda: len(store.inventory()) == 5, 60, "the board and 4 simulated")
            url = release(kit, images, "1.2.0", ("refuse-session",))
            spec = write_rollout(
                str(tmp_path / "bad.toml"),
                "real-bad",
                url,
                kit.root_path,
                pilot={"per_cell": 1, "include": ["board-1"], "soak": 1},
                waves={"sizes": ["rest"], "soak": 1},
                timeouts={"download": 120, "install": 120, "reboot": 120, "trial": 180},
            )
            assert run_cli("--db", db, "rollout", "start", spec)[0] == 0
            wait_until(
                lambda: pj.active_halts(store.rollout("real-bad")),
                240,
                "the cohort's halt",
                explain=lambda: status_text(store, "real-bad"),
            )
            halt = store.rollout("real-bad")["halts"][0]
            assert halt["cohort"] == "%s/%s/1.0.0" % (MODEL, HW) and halt["devices"] == ["board-1"]
            text = status_text(store, "real-bad")
            assert (
                "board-1 (%s/%s/1.0.0): check-failed; trial failed; charging-session"
                % (
                    MODEL,
                    HW,
                )
                in text
            ), text
            targets = {t["device_id"]: t for t in store.targets("real-bad")}
            assert [d for d, t in targets.items() if t["job_id"]] == ["board-1"]
            # The board's own row, as the agent publishes it after the rollback.
            row = wait_until(
                lambda: [r for r in store.inventory() if r["device_id"] == "board-1"
                         and r["rollbacks"] == ["1.2.0"]],
                60,
                "the board's rollback in its inventory row",
            )[0]  # fmt: skip
            assert (row["site"], row["site_type"], row["version"]) == (site, site_type, "1.0.0")
            assert set(row["components"]) == {"rootfs", "safety"}
            with store.engine.connect() as c:
                causes = c.execute(
                    statuses.select().where(
                        statuses.c.device_id == "board-1", statuses.c.status == m.ROLLED_BACK
                    )
                ).all()
            assert [r.cause for r in causes] == [m.CAUSE_CHECK_FAILED]
            again = write_rollout(str(tmp_path / "again.toml"), "real-again", url, kit.root_path)
            code, out = run_cli("--db", db, "rollout", "plan", again)
            assert "skipped 1: rolled back from 1.2.0 before: never offered again" in out, out
            # A good release on the board: committed (its safety MCU answers the session
            # check), soaked, succeeded.
            url = release(kit, images, "1.2.1", ())
            good = write_rollout(
                str(tmp_path / "good.toml"),
                "real-good",
                url,
                kit.root_path,
                target={"devices": ["board-1"]},
                pilot={"per_cell": 1, "soak": 1},
                timeouts={"download": 120, "install": 120, "reboot": 120, "trial": 180},
            )
            assert run_cli("--db", db, "rollout", "start", good)[0] == 0
            wait_until(
                lambda: store.rollout("real-good")["state"] == pj.DONE,
                240,
                "the good release done",
                explain=lambda: status_text(store, "real-good"),
            )
            assert [t["state"] for t in store.targets("real-good")] == [pj.SUCCEEDED]
    finally:
        for d in drivers:
            d.close()
        for b in boards:
            b.close()
        pings.stop()
        csms.stop()
