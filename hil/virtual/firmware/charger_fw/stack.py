"""The charging stack of the virtual firmware: sessions, an energy meter, alarms.

It serves the charging-stack control protocol the agent's adapter speaks
(agent/station/charging.py): one JSON object per line over a Unix socket. Firmware defects
(`refuse-session`, `alarm-storm`) live here, so the agent's checks see what a broken
release would really do rather than a flag saying "I am broken".
"""

import json
import os
import socketserver
import threading
import time


class ChargingStack:
    def __init__(self, defects=(), clock=time.time, pilot_path=None, ocpp=None, mcu_ports=None):
        self.defects = set(defects)
        # The MCUs' UARTs: the contactor goes through the safety MCU, the energy count
        # through the meter MCU (its application shares the UART with MCUboot's SMP server).
        self.mcu_ports = dict(mcu_ports or {})
        self.ocpp = ocpp  # the station's OCPP client: sessions become TransactionEvents
        self.pilot_path = pilot_path  # the CP state the EV (simulator) presents
        self.clock = clock
        self.lock = threading.Lock()
        self.session = None  # {"id_tag", "started", "energy_wh"} while a session runs
        self.sessions_done = 0
        self.sessions_failed = 0  # starts the charger refused (not "no vehicle")
        self.alarms = []  # [{"code", "ts"}]
        self._storm = None
        # False while a firmware update holds the connector (OCPP L01.FR.07): a running
        # session goes on, no new one starts, and a connector that becomes free stays so.
        self.available = True

    # -- what an EV driver and the CSMS do ---------------------------------------------------

    def authorize(self, id_tag):
        return {"ok": bool(id_tag), "id_tag": id_tag}

    def start(self, id_tag):
        with self.lock:
            if "refuse-session" in self.defects:
                self.sessions_failed += 1
                self._raise_alarm("ConnectorLockFailure")
                return {"ok": False, "reason": "connector lock failed"}
            if self.session:
                return {"ok": False, "reason": "session already active"}
            if not self.available:
                return {"ok": False, "reason": "connector unavailable: firmware update pending"}
            cp = self.pilot()
            if cp not in ("B", "C", "D"):
                return {"ok": False, "reason": "no vehicle connected (CP state %s)" % cp}
            if "sessions-fail-later" in self.defects and self.sessions_done >= 1:
                # Passes the trial's self-test, then the contactor stops closing; no alarm.
                self.sessions_failed += 1
                return {"ok": False, "reason": "contactor did not close"}
            if "faults-under-load" in self.defects and self.sessions_done >= 1 and not self._storm:
                # Passes the trial's one self-test session, then trips under real use.
                self._start_storm(threading.Event(), 0.05)
            closed = self.mcu("CONTACTOR ON")
            if closed is not None and not closed.startswith("OK"):
                self.sessions_failed += 1
                self._raise_alarm("ContactorFailure")
                return {"ok": False, "reason": "safety MCU: %s" % closed}
            self.session = {"id_tag": id_tag, "started": self.clock(), "energy_wh": 0,
                            "tx": "tx-%d" % (self.sessions_done + 1)}  # fmt: skip
            if self.ocpp:
                self.ocpp.transaction("Started", self.session["tx"], id_tag, 0)
                self.ocpp.connector_changed("Occupied")
            return {"ok": True}

    def pilot(self):
        """IEC 61851 CP state measured on the pilot line (B, C, D: a vehicle is connected)."""
        if not self.pilot_path:
            return "B"
        try:
            with open(self.pilot_path) as f:
                return f.read().strip() or "A"
        except OSError:
            return "A"

    def meter(self):
        """Advance the meter one step (energy flows while a session is active)."""
        with self.lock:
            if not self.session:
                return {"ok": False, "reason": "no session"}
            counted = self.mcu("METER", "meter")
            if counted is not None and not counted.startswith("OK METER"):
                return {"ok": False, "reason": "energy meter MCU: %s" % counted}
            self.session["energy_wh"] += 125
            return {"ok": True, "energy_wh": self.session["energy_wh"]}

    def stop(self):
        with self.lock:
            if not self.session:
                return {"ok": False, "reason": "no session"}
            session, self.session = self.session, None
            self.mcu("CONTACTOR OFF")
            energy = session["energy_wh"]
            self.sessions_done += 1
            if self.ocpp:
                self.ocpp.transaction("Ended", session["tx"], session["id_tag"], energy)
                self.ocpp.connector_changed("Available" if self.available else "Unavailable")
            return {"ok": True, "energy_wh": energy}

    def set_availability(self, available):
        """The update agent blocks (False) or releases (True) the connector."""
        with self.lock:
            changed = self.available != bool(available)
            self.available = bool(available)
            if changed and not self.session and self.ocpp:
                self.ocpp.connector_changed("Available" if self.available else "Unavailable")
            return {"ok": True, "available": self.available}

    def status(self):
        with self.lock:
            return {
                "ok": True,
                "session_active": self.session is not None,
                "cp": self.pilot(),
                "sessions": {
                    "started": self.sessions_done + (1 if self.session else 0),
                    "failed": self.sessions_failed,
                },
                "sessions_done": self.sessions_done,
                "available": self.available,
                "alarms": list(self.alarms[-200:]),
            }

    def mcu(self, line, name="safety"):
        """One command to an MCU's application; its reply, "ERR ..." when it does not answer
        or is busy (being flashed: the agent holds the port), None without that MCU."""
        path = self.mcu_ports.get(name)
        if not path:
            return None
        import serial

        try:
            with serial.Serial(path, 115200, timeout=1.0, exclusive=True) as port:
                port.reset_input_buffer()
                port.write(line.encode() + b"\n")
                reply = port.readline().decode("ascii", "replace").strip()
        except (OSError, serial.SerialException) as e:
            return "ERR MCU port busy or gone (%s)" % e
        return reply or "ERR no answer from the %s MCU" % name

    def component(self, name):
        reply = self.mcu("VERSION", name)
        if reply and reply.startswith("VERSION "):
            return {"ok": True, "name": name, "version": reply.split(" ", 1)[1]}
        return {"ok": False, "name": name, "reason": reply or "no MCU"}

    # -- faults ---------------------------------------------------------------------------------

    def _raise_alarm(self, code):
        self.alarms.append({"code": code, "ts": self.clock()})

    def start_alarm_storm(self, stop_event, interval=0.05):
        """`alarm-storm` firmware: a ground-fault monitor that trips constantly."""
        with self.lock:
            self._start_storm(stop_event, interval)

    def _start_storm(self, stop_event, interval):

        def storm():
            while not stop_event.wait(interval):
                with self.lock:
                    self._raise_alarm("GroundFailure")

        self._storm = threading.Thread(target=storm, daemon=True)
        self._storm.start()

    def handle(self, request):
        cmd = request.get("cmd")
        if cmd == "authorize":
            return self.authorize(request.get("id_tag", ""))
        if cmd == "start":
            return self.start(request.get("id_tag", "SELFTEST"))
        if cmd == "meter":
            return self.meter()
        if cmd == "stop":
            return self.stop()
        if cmd == "status":
            return self.status()
        if cmd == "set_availability":
            return self.set_availability(request.get("available", True))
        if cmd == "component":
            return self.component(request.get("name"))
        return {"ok": False, "reason": "unknown command %r" % cmd}


def serve(stack, path):
    """Serve `stack` on the Unix socket `path` in a daemon thread; returns the server."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                try:
                    reply = stack.handle(json.loads(line))
                except ValueError:
                    reply = {"ok": False, "reason": "request is not JSON"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

    if os.path.exists(path):
        os.unlink(path)
    server = socketserver.ThreadingUnixStreamServer(path, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
