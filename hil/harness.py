"""What every rig has, virtual or bench: the backend on this host and the board's drivers.

    mosquitto (real broker)  <--  agent on the board (jobs, statuses, inventory, ping)
    OCPP 2.0.1 CSMS (ocpp)   <--  agent's OCPP check
    image server (HTTP)  <- fault proxy <-  agent downloads signed releases
    BackendSim               answers pings, sends jobs, collects statuses and inventory
    console / relay / EV simulator: pyserial drivers (hil/drivers)

Invariant: a rig owns every process and port it opens and closes all of them in close(),
even after a failed scenario. Subclasses say where the board is and how releases are built;
the scenario catalogue (hil/scenarios) only uses the methods of this class.
"""

import os

from agent.frontends.backend_sim import BackendSim
from agent.trust import crypto
from hil.drivers.console import Console
from hil.drivers.evsim import EvSim
from hil.drivers.power import LcusRelay
from hil.services.csms import Csms
from hil.services.faultproxy import FaultProxy
from hil.services.httpserver import FileServer
from hil.services.mosquitto import BACKEND_IDENTITY, Mosquitto, Pki


class Harness:
    """listen: address the board reaches this host at; ports: fixed ports a provisioned
    board points at ({"mqtt", "ocpp", "images"}; 0 = any free port)."""

    # A console line the board prints once per boot (scenarios count boots with it).
    boot_banner = r"U-Boot \d"
    # The requests the board's agent makes for the bundle of a good update, in order, as
    # their Range headers (None: the whole file). The Linux agent: the signed header (one
    # bounded Range request), then the streaming install of a format-1 bundle (it knows the
    # format from the verified manifest, docs/transfer.md). Another board says its own.
    bundle_requests = ("bytes=0-4095", None)

    def __init__(self, workdir, device_id, listen="127.0.0.1", ports=None, tls=False,
                 link_rate=0, on_status=None, https=False):  # fmt: skip
        self.dir = os.path.abspath(workdir)
        self.device_id = device_id
        self.listen = listen
        self.ports = dict({"mqtt": 0, "ocpp": 0, "images": 0}, **(ports or {}))
        self.tls = tls  # broker with TLS client certificates and a per-device ACL
        self.https = https  # images served over https, by the rig's CA (self.pki)
        self.link_rate = link_rate  # bandwidth of the board's link to the image server
        self.on_status = on_status
        self.pki = self.broker = self.csms = self.images = self.network = self.backend = None
        self.console = self.power = self.evsim = None
        self.scenario = {"job": None, "expect": None, "final": None}
        self.jobs = 0

    # -- set-up -------------------------------------------------------------------------------

    def start(self):
        try:
            self.start_backend()
            self.start_board()
        except BaseException:
            self.close()
            raise
        return self

    def start_backend(self):
        if self.tls or self.https:
            self.pki = Pki(os.path.join(self.dir, "pki"))
        self.broker = Mosquitto(os.path.join(self.dir, "broker"), port=self.ports["mqtt"] or None,
                                pki=self.pki if self.tls else None,
                                host=self.listen).start()  # fmt: skip
        self.csms = Csms(port=self.ports["ocpp"] or None, host=self.listen,
                         subprotocols=("ocpp2.0.1", "ocpp1.6")).start()  # fmt: skip
        context = self.pki.server_context() if self.https else None
        self.images = FileServer({}, ssl_context=context, host="127.0.0.1").start()
        # Downloads cross a fault proxy: scenarios slow the link down or cut it.
        self.network = FaultProxy("127.0.0.1", self.images.server_address[1], self.link_rate,
                                  host=self.listen, port=self.ports["images"]).start()  # fmt: skip
        # A backend that reconnects quickly, as a production broker cluster would appear.
        settings = self.broker.settings(reconnect_max_s=1.0)
        if self.tls:
            settings["tls"] = self.pki.tls_settings(BACKEND_IDENTITY)
        self.backend = BackendSim(settings, on_status=self.on_status).start()

    def start_board(self):
        raise NotImplementedError

    def open_drivers(self, console_url, relay_url, relay_channel, evsim_url):
        self.power = LcusRelay(relay_url, channel=relay_channel)
        self.evsim = EvSim(evsim_url) if evsim_url else None
        if self.evsim:
            self.evsim.set_cp("B")  # a test vehicle is plugged in for the session check
        self.console = Console(console_url, log_path=os.path.join(self.dir, "console.log"))

    def parts(self):
        return (self.power, self.evsim, self.console, self.backend, self.network, self.images,
                self.csms, self.broker)  # fmt: skip

    def close(self):
        for part in self.parts():
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

    def power_on(self):
        self.power.on()

    def power_cut(self):
        self.power.off()

    def power_cut_during_env_write(self):
        """Cut power while the agent writes the boot env. On a bench this is a cut right
        after Installed (the env write follows within milliseconds); the virtual rig also
        leaves a torn copy on flash to make sure the write really was interrupted."""
        self.power_cut()

    def build_image(self, version, defects, pad_bytes):
        """A firmware image file for this board with the given defects."""
        raise NotImplementedError

    def build_mcu_image(self, name, version, defects):
        """The firmware file of MCU `name` ("safety", "meter") with the given defects and
        its manifest entry {id, protocol, address, version}: (path, mcu) (rigs with MCUs)."""
        raise NotImplementedError("this rig has no %s MCU to build firmware for" % name)

    def release(self, version, defects=(), security_version=1, signed_by_stranger=False,
                pad_bytes=0, mcu=None, meter=None):  # fmt: skip
        """Build and sign a release; returns the URL the board downloads it from (through the
        fault proxy). `signed_by_stranger`: signed by a key the board does not trust.
        `mcu`, `meter`: (version, defects) of the safety MCU's (STM32) and the energy meter
        MCU's (MCUboot) firmware the release carries too."""
        image = self.build_image(version, defects, pad_bytes)
        keys = [crypto.generate("ed25519")] if signed_by_stranger else None
        extra = []
        for name, spec in (("safety", mcu), ("meter", meter)):
            if spec is None:
                continue
            from agent.bundle.writer import PayloadSource

            path, info = self.build_mcu_image(name, spec[0], tuple(spec[1]))
            extra.append(PayloadSource("%s-fw" % name, None, path, component=name, mcu=info))
        path = self.kit.bundle_image(image, version, security_version, keys=keys, extra=extra)
        name = os.path.basename(path)
        self.images.files[name] = path
        scheme = "https" if self.https else "http"
        return "%s://%s:%d/%s" % (scheme, self.listen, self.network.server.getsockname()[1], name)

    def push_job(self, version, url, **extra):
        self.jobs += 1
        # Unique across rig runs: a bench board remembers job ids between scenarios.
        job_id = "job-%d-%s-%s" % (self.jobs, version, os.urandom(3).hex())
        job = {"id": job_id, "url": url, "version": version}
        job.update(extra)
        return self.backend.publish_job(self.device_id, job)

    def wait_status(self, job_id, statuses, timeout):
        wanted = (statuses,) if isinstance(statuses, str) else tuple(statuses)
        return self.backend.wait_status(
            self.device_id, lambda s: s.get("job_id") == job_id and s.get("status") in wanted,
            timeout)  # fmt: skip

    def wait_online(self, timeout=30):
        return self.backend.wait_inventory(self.device_id, lambda row: True, timeout)

    def statuses(self, job_id=None):
        return [s for s in self.backend.statuses(self.device_id)
                if job_id is None or s.get("job_id") == job_id]  # fmt: skip

    def inventory(self):
        return self.backend.inventory(self.device_id)

    def console_text(self):
        """What the rig read from the board's serial line."""
        return self.console.text() if self.console else ""
