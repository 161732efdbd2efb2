"""The charging-stack edge: how the agent asks the charger about sessions and alarms.

Invariant: the agent never installs or reboots while `session_active()` is true, and every
answer it acts on came from the stack itself. An OEM ports the agent by writing one small
class with these methods (or by speaking the JSON-lines protocol of `SocketStack`).
"""

import json
import socket

from agent.core.errors import Transient


class StackUnavailable(Transient):
    reason = "charging-stack"


class ChargingStack:
    """The contract. Each method returns plain dicts; failures raise StackUnavailable."""

    def session_active(self):
        raise NotImplementedError

    def alarms(self):
        """Recent alarms, oldest first: [{"code": str, "ts": epoch seconds}]."""
        raise NotImplementedError

    def sessions(self):
        """Session outcomes since the stack started: {"started": n, "failed": m}, or None
        when the stack does not count them (then only alarms are observed)."""
        return None

    def request(self, cmd, **fields):
        """Commands: authorize, start, meter, stop, status; and, on a charger with MCUs,
        {"cmd": "component", "name": ID} -> {"ok": bool, "version": str} (the MCU's
        application answers through the stack, which owns its protocol)."""
        raise NotImplementedError


class SocketStack(ChargingStack):
    """JSON lines over a Unix socket: {"cmd": ...} -> {"ok": bool, ...} (docs/charging-stack.md)."""

    def __init__(self, path, timeout=5.0):
        self.path = path
        self.timeout = timeout

    def request(self, cmd, **fields):
        fields["cmd"] = cmd
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(self.path)
                s.sendall(json.dumps(fields).encode() + b"\n")
                line = s.makefile("rb").readline()
        except OSError as e:
            raise StackUnavailable(
                "charging stack at %s did not answer %r: %s" % (self.path, cmd, e),
                hint="is the charging stack running?",
            ) from None
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            raise StackUnavailable("charging stack sent a malformed reply to %r" % cmd) from None

    def session_active(self):
        return bool(self.request("status").get("session_active"))

    def alarms(self):
        return self.request("status").get("alarms", [])

    def sessions(self):
        return self.request("status").get("sessions")


class FakeStack(ChargingStack):
    """In-memory stack for unit tests of the daemon wiring."""

    def __init__(self, refuse=False):
        self.active = False
        self.refuse = refuse
        self.recorded_alarms = []
        self.energy = 0
        self.outcomes = None  # {"started", "failed"} when a test sets it

    def session_active(self):
        return self.active

    def alarms(self):
        return list(self.recorded_alarms)

    def sessions(self):
        return self.outcomes

    def request(self, cmd, **fields):
        if cmd == "start":
            if self.refuse:
                return {"ok": False, "reason": "refused"}
            self.active, self.energy = True, 0
            return {"ok": True}
        if cmd == "meter":
            self.energy += 125
            return {"ok": self.active, "energy_wh": self.energy}
        if cmd == "stop":
            self.active = False
            return {"ok": True, "energy_wh": self.energy}
        if cmd == "authorize":
            return {"ok": True}
        return {"ok": True, "session_active": self.active, "alarms": self.recorded_alarms}
