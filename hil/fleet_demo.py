"""`make demo-fleet`: a fleet rollout with charger-fleet, printed as it happens.

Three virtual boards (the real agent, hil/virtual) and 500 simulated chargers (fleet/simulator)
at three sites in three time zones, all on one mosquitto. Release 1.1.0 breaks the charging
session on hardware revision rev-b: the rev-b cohort halts in the pilot with the reason (the
real boards' own trial failures among the evidence) while rev-c carries on; the operator
aborts it. Release 1.1.1 is good: pilot -> wave 1 -> wave 2 -> done. The update matrix is
printed and written as HTML.
"""

import argparse
import datetime
import os
import sys
import tempfile
import threading
import time
import zoneinfo

import tomli_w

from agent.bundle.writer import PayloadSource, create_bundle
from agent.frontends.backend_sim import BackendSim
from fleet import cli
from fleet import projection as pj
from fleet.controller import Controller
from fleet.db import open_db
from fleet.simulator import Simulator, make_fleet
from fleet.store import Store
from fleet.windows import local_offset_s
from hil.drivers.evsim import EvSim
from hil.release import ReleaseKit
from hil.services.csms import Csms
from hil.services.httpserver import FileServer
from hil.services.mosquitto import Mosquitto
from hil.virtual.image import build_image
from hil.virtual.rig import HW, MODEL, provision

T0 = time.monotonic()
LOCK = threading.Lock()
SITES = [
    ("depot-hamburg", "depot", "Europe/Berlin"),
    ("public-lyon", "public", "Europe/Paris"),
    ("work-austin", "workplace", "America/Chicago"),
]
OTHER_HW = "rev-c"


def say(text):
    with LOCK:
        sys.stdout.write("[%6.1fs] %s\n" % (time.monotonic() - T0, text))
        sys.stdout.flush()


def peaks_away_from_now(tz):
    """A 3-hour peak that starts 6 hours from now, local: real peaks, none in the demo's way."""
    now = datetime.datetime.now(zoneinfo.ZoneInfo(tz))
    start = (now.hour + 6) % 24
    return ["%02d:00-%02d:00" % (start, (start + 3) % 24)]


def release(kit, images, version, defects):
    image = build_image(os.path.join(kit.dir, "fw-%s.tar" % version), version, defects)
    out = os.path.join(kit.dir, "charger-%s.cub" % version)
    create_bundle(
        out,
        [PayloadSource("rootfs", "rootfs", image, "gzip")],
        [kit.release_key],
        version=version,
        security_version=1,
        compatible=[{"model": MODEL, "hardware_revisions": [HW, OTHER_HW]}],
        expires=int(time.time()) + 86400,
    )
    images.files[os.path.basename(out)] = out
    return "http://127.0.0.1:%d/%s" % (images.server_address[1], os.path.basename(out))


def write_files(workdir, name, url, root, boards, soak):
    sites = {
        "site_types": {t: {"peak": peaks_away_from_now(tz)} for _, t, tz in SITES},
        "sites": {
            s: {"tz": tz, "type": t, "uplink": "cellular" if t == "public" else "wired"}
            for s, t, tz in SITES
        },
    }
    with open(os.path.join(workdir, "sites.toml"), "wb") as f:
        tomli_w.dump(sites, f)
    rollout = {
        "name": name,
        "release": url,
        "trust_root": root,
        # Three sites for up to nine cells: three pilot chargers per site (the default is one).
        "pilot": {"per_cell": 1, "per_site": 3, "soak": soak, "include": boards},
        "waves": {"sizes": ["20%", "rest"], "soak": soak / 2},
        "approval": {"start": False, "above_share": 1.0},
        "halt": {"pilot_failures": 1, "wave_failures": 5, "fleet_failures": 25},
        "timeouts": {"download": 120, "install": 120, "reboot": 120, "trial": 180},
        "schedule": {"sites": "sites.toml", "jitter": 0, "site_share": 0.25},
        "cost": {"per_mb": 0.08, "currency": "EUR"},
    }
    path = os.path.join(workdir, "%s.toml" % name)
    with open(path, "wb") as f:
        tomli_w.dump(rollout, f)
    return path


def charger_fleet(db, *argv):
    code = cli.main(["--db", db] + list(argv))
    if code not in (0, 4):
        raise SystemExit("demo: charger-fleet %s exited %d" % (" ".join(argv), code))


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("demo: %s did not happen within %ss" % (what, timeout))
        time.sleep(0.5)  # polling the controller's database, as `rollout status` does


def start_boards(workdir, kit, broker, csms, n=3):
    boards, drivers = [], []
    for i, (site, stype, tz) in enumerate(SITES[:n]):
        device = "board-%d" % (i + 1)
        board = provision(
            os.path.join(workdir, device),
            device,
            kit,
            "1.0.0",
            broker.port,
            csms.port,
            trial_window_s=60,
            overrides={
                "device": {"site": site, "site_type": stype, "group": "fleet"},
                "system": {"utc_offset_s": local_offset_s(time.time(), tz)},
                "trial": {"window_s": 60},
            },
        )
        board.power_input(1, True)  # the supply line: the board and its safety MCU
        ev = EvSim(board.ev.port)
        ev.set_cp("B")  # a test vehicle is plugged in for the session check
        boards.append(board)
        drivers.append(ev)
    return boards, drivers


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m hil.fleet_demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", help="keep everything here (default: a temp dir)")
    parser.add_argument("--chargers", type=int, default=500, help="simulated chargers")
    parser.add_argument("--soak", type=float, default=8.0, help="pilot soak, seconds")
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="charger-fleet-demo-")
    os.makedirs(workdir, exist_ok=True)
    db = os.path.join(workdir, "fleet.db")
    say("work dir %s" % workdir)
    broker = Mosquitto(
        os.path.join(workdir, "broker"),
        extra_config=["max_queued_messages 0", "max_inflight_messages 0"],
    ).start()
    csms = Csms().start()
    images = FileServer({}).start()
    pings = BackendSim(broker.settings()).start()  # answers the agents' comm-check pings
    kit = ReleaseKit(os.path.join(workdir, "releases"), MODEL, HW)
    parts = [broker, csms, pings]
    boards, drivers, sim, stop, serving = [], [], None, threading.Event(), None
    try:
        boards, drivers = start_boards(workdir, kit, broker, csms)
        say(
            "3 virtual boards (%s %s, the real agent) powered on at %s"
            % (MODEL, HW, ", ".join(s for s, _, _ in SITES))
        )
        chargers = make_fleet(
            args.chargers,
            [(MODEL, HW), (MODEL, OTHER_HW)],
            [(s, t) for s, t, _ in SITES],
            prefix_id="sim",
            offsets={s: local_offset_s(time.time(), tz) for s, _, tz in SITES},
        )

        def profile_for(c, job):
            return (
                "fail-trial:charging-session" if job.version == "1.1.0" and c.hw == HW else "good"
            )

        sim = Simulator(
            broker.settings(),
            chargers,
            profile_for=profile_for,
            timing={"download_s": 1.0, "install_s": 1.0, "reboot_s": 1.0, "trial_s": 1.5},
        ).start()
        say(
            "%d simulated chargers (%s and %s) online over %d MQTT connections"
            % (len(chargers), HW, OTHER_HW, len(sim.conns))
        )
        store = Store(open_db(db))
        ctl = Controller(
            store,
            broker.settings(),
            client_id="demo-controller",
            tick_s=0.5,
            say=lambda t: say("controller: " + t),
        )
        serving = threading.Thread(target=ctl.run, args=(stop, None, True), daemon=True)
        serving.start()
        wait(lambda: len(store.inventory()) >= args.chargers + 3, 120, "the inventory")
        say(
            "inventory: %d chargers; the update matrix before any rollout:"
            % (len(store.inventory()))
        )
        charger_fleet(db, "matrix")
        boards_ids = ["board-%d" % i for i in (1, 2, 3)]

        # -- a bad release ----------------------------------------------------------------
        url = release(kit, images, "1.1.0", ("refuse-session",))
        spec = write_files(workdir, "ac22-1.1.0", url, kit.root_path, boards_ids, args.soak)
        say("release 1.1.0 (refuses charging sessions on %s): plan, then start" % HW)
        charger_fleet(db, "rollout", "plan", spec)
        charger_fleet(db, "rollout", "start", spec)
        wait(
            lambda: any(
                h["cohort"] and h["cohort"].split("/")[1] == HW
                for h in store.rollout("ac22-1.1.0")["halts"]
            ),
            600,
            "the rev-b halt",
        )
        cohort_c = lambda t: t["cohort"].split("/")[1] == OTHER_HW  # noqa: E731
        wait(
            lambda: all(
                t["state"] in pj.FINAL or t["state"] == pj.PLANNED
                for t in store.targets("ac22-1.1.0")
                if t["wave"] == 0
            ),
            600,
            "the pilot to settle",
        )
        say("pilot of 1.1.0 settled:")
        charger_fleet(db, "rollout", "status", "ac22-1.1.0")
        ok_c = [t for t in store.targets("ac22-1.1.0") if cohort_c(t) and t["wave"] == 0]
        say(
            "rev-c pilot chargers: %s; the rev-b cohort is halted, rev-c is not"
            % (", ".join(sorted({t["state"] for t in ok_c})))
        )
        charger_fleet(db, "matrix", "--rollout", "ac22-1.1.0")
        charger_fleet(
            db,
            "--by",
            "demo-operator",
            "rollout",
            "abort",
            "ac22-1.1.0",
            "--why",
            "rev-b refuses sessions; fixed in 1.1.1",
        )

        # -- a good release ---------------------------------------------------------------
        url = release(kit, images, "1.1.1", ())
        spec = write_files(workdir, "ac22-1.1.1", url, kit.root_path, boards_ids, args.soak)
        say("release 1.1.1 (good): plan, then start")
        charger_fleet(db, "rollout", "plan", spec)
        charger_fleet(db, "rollout", "start", spec)
        wait(lambda: store.rollout("ac22-1.1.1")["state"] == pj.DONE, 900, "1.1.1 done")
        charger_fleet(db, "rollout", "status", "ac22-1.1.1")
        html = os.path.join(workdir, "matrix.html")
        charger_fleet(db, "matrix", "--rollout", "ac22-1.1.1")
        charger_fleet(db, "matrix", "--rollout", "ac22-1.1.1", "--html", html)
        versions = sorted({r["version"] for r in store.inventory()})
        say("fleet now runs %s; HTML matrix: %s" % (", ".join(versions), html))
        return 0
    finally:
        stop.set()
        if serving is not None:
            serving.join(30)  # it leaves its broker session: before the broker stops
        if sim is not None:
            sim.stop()
        for d in drivers:
            d.close()
        for b in boards:
            b.close()
        images.shutdown()
        for p in reversed(parts):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
