"""A complete virtual rig: backend services on loopback plus one virtual charger board.

    mosquitto (real broker)  <-- board uplink --  agent on the board
    OCPP 2.0.1 CSMS (ocpp)   <-- board uplink --  agent's OCPP check
    image server (HTTP)      <-------------------  agent downloads bundles
    BackendSim               answers pings, sends jobs, collects statuses and inventory

Invariant: the rig owns every process it starts and stops all of them in close(), even
after a failed scenario; nothing listens outside 127.0.0.1.
"""

import os
import sys

from agent import crypto
from agent.backend_sim import BackendSim
from agent.slotstate import SlotState
from hil.drivers.console import Console
from hil.drivers.evsim import EvSim
from hil.drivers.power import LcusRelay
from hil.release import ReleaseKit
from hil.services.csms import Csms
from hil.services.faultproxy import FaultProxy
from hil.services.httpserver import FileServer
from hil.services.mosquitto import BACKEND_IDENTITY, Mosquitto, Pki, free_port
from hil.virtual import layout
from hil.virtual.board import VirtualBoard

MODEL = "ACME-AC22"
HW = "rev-b"


class VirtualRig:
    def __init__(
        self,
        workdir,
        device_id="cp-0001",
        trial_window_s=60,
        watchdog_s=8.0,
        factory_version="1.0.0",
        on_status=None,
        link_rate=0,
        agent_overrides=None,
        tls=False,
    ):
        self.dir = os.path.abspath(workdir)
        self.device_id = device_id
        self.trial_window_s = trial_window_s
        self.watchdog_s = watchdog_s
        self.factory_version = factory_version
        self.on_status = on_status
        self.agent_overrides = agent_overrides or {}  # {section: {key: value}} for agent.toml
        self.link_rate = link_rate  # bandwidth of the board's link to the image server
        self.pki = None
        self.tls = tls  # broker with TLS client certificates and a per-device ACL
        self.broker = self.csms = self.images = self.backend = self.board = None
        self.network = self.console = self.power = self.evsim = None
        self.kit = None
        self.jobs = 0

    # -- set-up -------------------------------------------------------------------------------

    def start(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self):
        if self.tls:
            self.pki = Pki(os.path.join(self.dir, "pki"))
        self.broker = Mosquitto(os.path.join(self.dir, "broker"), pki=self.pki).start()
        self.csms = Csms().start()
        self.images = FileServer({}).start()
        # Downloads cross a fault proxy: the scenarios drop the link through it.
        self.network = FaultProxy(
            "127.0.0.1", self.images.server_address[1], rate=self.link_rate
        ).start()
        self.kit = ReleaseKit(os.path.join(self.dir, "releases"), MODEL, HW)
        # A backend that reconnects quickly, as a production broker cluster would appear.
        settings = self.broker.settings(reconnect_max_s=1.0)
        if self.pki:
            settings["tls"] = self.pki.tls_settings(BACKEND_IDENTITY)
        self.backend = BackendSim(settings, on_status=self.on_status).start()
        board_dir = os.path.join(self.dir, "board")
        mqtt_port, ocpp_port = free_port(), free_port()
        layout.create(
            board_dir,
            self.agent_sections(board_dir, mqtt_port, ocpp_port),
            [
                {"local_port": mqtt_port, "host": "127.0.0.1", "port": self.broker.port},
                {"local_port": ocpp_port, "host": "127.0.0.1", "port": self.csms.port},
            ],
            self.kit.image(self.factory_version),
            watchdog=self.watchdog_s,
        )
        SlotState(os.path.join(board_dir, "data")).set_good("A", self.factory_version, 1)
        self.board = VirtualBoard(board_dir)
        # Driven through the bench drivers, exactly as a real bench is (docs/hil.md).
        self.power = LcusRelay(self.board.relay.port, channel=1)
        self.evsim = EvSim(self.board.ev.port)
        self.evsim.set_cp("B")  # a test vehicle is plugged in for the trial's session check
        self.console = Console(
            self.board.console_path, log_path=os.path.join(self.dir, "console.log")
        )

    def agent_sections(self, board_dir, mqtt_port, ocpp_port):
        sections = {
            "device": {"id": self.device_id, "model": MODEL, "hardware_revision": HW,
                       "group": "pilot", "site_type": "public-ac"},
            "trust": {"root": self.kit.root_path},
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "prefix": "chargers",
                     "reconnect_max_s": 2.0},
            "ocpp": {"url": "ws://127.0.0.1:%d/ocpp" % ocpp_port},
            "charging_stack": {"socket": "run/stack.sock", "poll_s": 0.5},
            "system": {"reboot_command": [sys.executable, "-m", "charger_fw.reboot"],
                       "utc_offset_s": 0},
            "trial": {"window_s": self.trial_window_s,
                      "checks": ["communication", "charging-session", "alarms"],
                      "alarms": {"observe_s": 3}},
            "download": {"retries": 5, "backoff_s": 0.2, "backoff_max_s": 2.0, "timeout_s": 10},
        }  # fmt: skip
        if self.pki:
            sections["mqtt"]["tls"] = self.pki.tls_settings(self.device_id)
        for name, table in self.agent_overrides.items():
            sections.setdefault(name, {}).update(table)
        return sections

    def close(self):
        parts = (
            self.power,
            self.evsim,
            self.board,
            self.console,
            self.backend,
            self.network,
            self.images,
            self.csms,
            self.broker,
        )
        for part in parts:
            if part is None:
                continue
            try:
                part.close() if hasattr(part, "close") else part.stop()
            except Exception:  # keep tearing down the rest
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- what scenarios do ----------------------------------------------------------------------

    def _switch(self, on, timeout=10.0):
        """Flip the relay and wait until the board's supply really changed."""
        with self.board.switched:
            before = self.board.switches
        (self.power.on if on else self.power.off)()
        with self.board.switched:
            if not self.board.switched.wait_for(lambda: self.board.switches > before, timeout):
                raise TimeoutError(
                    "the relay did not switch the board %s" % ("on" if on else "off")
                )

    def power_on(self):
        self._switch(True)

    def power_cut(self):
        self._switch(False)

    def release(
        self, version, defects=(), security_version=1, signed_by_stranger=False, pad_bytes=0
    ):
        """Build and sign a firmware release; returns the URL the board downloads it from
        (through the fault proxy). `signed_by_stranger`: a key the board does not trust."""
        keys = [crypto.generate("ed25519")] if signed_by_stranger else None
        path = self.kit.bundle(version, defects, security_version, keys=keys, pad_bytes=pad_bytes)
        name = os.path.basename(path)
        self.images.files[name] = path
        return "http://127.0.0.1:%d/%s" % (self.network.port, name)

    def push_job(self, version, url, **extra):
        self.jobs += 1
        job = {"id": "job-%d-%s" % (self.jobs, version), "url": url, "version": version}
        job.update(extra)
        return self.backend.publish_job(self.device_id, job)

    def wait_status(self, job_id, statuses, timeout):
        wanted = (statuses,) if isinstance(statuses, str) else tuple(statuses)
        return self.backend.wait_status(
            self.device_id,
            lambda s: s.get("job_id") == job_id and s.get("status") in wanted,
            timeout,
        )

    def wait_online(self, timeout=30):
        return self.backend.wait_inventory(self.device_id, lambda row: True, timeout)

    def statuses(self, job_id=None):
        return [
            s
            for s in self.backend.statuses(self.device_id)
            if job_id is None or s.get("job_id") == job_id
        ]

    def inventory(self):
        return self.backend.inventory(self.device_id)

    def stack(self):
        """The board's charging stack, as a driver at the charger would use it."""
        from agent.charging import SocketStack

        return SocketStack(os.path.join(self.board.dir, "run", "stack.sock"))

    def console_text(self):
        """What the rig read from the board's serial line (pyserial on the pty)."""
        return self.console.text() if self.console else ""
