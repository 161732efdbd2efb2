"""Rollout and sites files for the fleet tests, and a running simulated fleet."""

import contextlib
import io
import os

import tomli_w

from fleet import cli
from fleet.simulator import Simulator, make_fleet

FAST = {
    "download_s": 0.05,
    "install_s": 0.05,
    "reboot_s": 0.05,
    "trial_s": 0.05,
    "regress_after_s": 0.1,
    "session_s": 1.0,
    "slow_download_s": 2.0,
}


def write_sites(path, sites, peaks=None):
    """sites: [(id, type, tz)]; peaks: {type: ["HH:MM-HH:MM"]}."""
    doc = {
        "site_types": {t: {"peak": list((peaks or {}).get(t, []))} for t in {s[1] for s in sites}},
        "sites": {
            sid: {"type": t, "tz": tz, "uplink": "cellular" if i % 2 else "wired"}
            for i, (sid, t, tz) in enumerate(sites)
        },
    }
    with open(path, "wb") as f:
        tomli_w.dump(doc, f)
    return path


def write_rollout(path, name, release, root, sites=None, **sections):
    doc = {
        "name": name,
        "release": release,
        "trust_root": root,
        "pilot": {"per_cell": 1, "soak": 0.5},
        "waves": {"sizes": ["50%", "rest"], "soak": 0.5},
        "approval": {"start": False, "above_share": 1.0},
        "timeouts": {"download": 30, "install": 30, "reboot": 30, "trial": 30},
        "schedule": {"jitter": 0, "site_share": 0.25},
        "cost": {"per_mb": 0.1},
    }
    if sites:
        doc["schedule"]["sites"] = sites
    for key, value in sections.items():
        if isinstance(value, dict):
            doc.setdefault(key, {}).update(value)
        else:
            doc[key] = value
    with open(path, "wb") as f:
        tomli_w.dump(doc, f)
    return path


def run_cli(*argv):
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


@contextlib.contextmanager
def sim_fleet(
    broker, n, models, sites, profile_of=None, per_connection=500, timing=None, prefix_id=None
):
    prefix_id = prefix_id or "sim%s" % os.urandom(2).hex()
    chargers = make_fleet(n, models, sites, profile_of, prefix_id=prefix_id)
    sim = Simulator(
        broker.settings(),
        chargers,
        per_connection=per_connection,
        timing=dict(FAST, **(timing or {})),
    )
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
        # Retained rows would leak into the next test on this module's broker.
        from fleet.transport import Connection

        c = Connection(
            broker.settings(), "cleaner-%s" % os.urandom(3).hex(), session_expiry_s=0
        ).start()
        from agent.core import messages as m

        infos = [
            c.publish(m.topic("chargers", ch.id, suffix), b"", retain=True)
            for ch in chargers
            for suffix in m.RETAINED
        ]
        for info in infos:
            info.wait_for_publish(10)
        c.stop()


class Observer:
    """Sees every job and cancel the controller publishes, with its arrival time: the
    audit a test checks against the event log."""

    def __init__(self, broker):
        import json
        import threading
        import time

        from agent.core import messages as m
        from fleet.transport import Connection

        self.seen = []  # (arrival, suffix, device, job_id)
        self._lock = threading.Lock()

        def on_message(topic, payload, mid, qos):
            device, suffix = m.split_topic("chargers", topic)
            try:
                job_id = json.loads(payload).get("job_id")
            except ValueError:
                job_id = None
            with self._lock:
                self.seen.append((time.time(), suffix, device, job_id))

        self.conn = Connection(
            broker.settings(), "observer-%s" % os.urandom(3).hex(), on_message, session_expiry_s=0
        )
        for suffix in (m.JOB, m.CANCEL):
            self.conn.subscribe(m.device_filter("chargers", suffix))
        self.conn.start()

    def of(self, suffix):
        from agent.core import messages as m

        wanted = {"job": m.JOB, "cancel": m.CANCEL}[suffix]
        with self._lock:
            return [s for s in self.seen if s[1] == wanted]

    def close(self):
        self.conn.stop()
