"""An EV simulator on the charger's control-pilot line, driven by a line protocol over serial.

Invariant: one command line out, exactly one reply line back (`OK ...` or `ERR ...`), in
order; the driver never sends the next command before the previous reply arrived, so a reply
always belongs to the command just sent. A missing reply is an error, never a guess.

The protocol (ASCII, one command per line, `\\n` terminated, replies the same):

    ID                 -> ID <name> <protocol version>            e.g. "ID evsim 1"
    CP <A|B|C|D|E|F>   -> OK CP <state>        set the vehicle side of the pilot (IEC 61851-1):
                          A no vehicle, B connected, C charging, D charging with ventilation,
                          E short/no pilot (error), F charger fault (-12 V)
    STATUS             -> STATUS CP <state> PWM <duty %> MAX <amps>A
                          PWM is the duty cycle the simulator measures on the pilot (set by
                          the charger); MAX the current it signals (0 when no PWM, 5 % = digital)
    anything else      -> ERR <reason>
"""

import serial

from agent.core.errors import ConfigError, Transient

CP_STATES = ("A", "B", "C", "D", "E", "F")
PROTOCOL_VERSION = "1"


class EvSimError(Transient):
    """The EV simulator did not answer, or answered ERR."""

    reason = "evsim"


def max_current(duty):
    """Amps signalled by a pilot PWM duty cycle (IEC 61851-1 annex A); 0 when none."""
    if 10 <= duty <= 85:
        return round(duty * 0.6, 1)
    if 85 < duty <= 96:
        return round((duty - 64) * 2.5, 1)
    return 0.0


def parse_status(line):
    """{"cp": "C", "pwm": 53.3, "max_a": 32.0} from a STATUS reply line."""
    parts = line.split()
    if len(parts) != 7 or parts[0] != "STATUS" or parts[1] != "CP" or parts[3] != "PWM":
        raise EvSimError("malformed STATUS reply %r" % line)
    try:
        return {"cp": parts[2], "pwm": float(parts[4]), "max_a": float(parts[6].rstrip("A"))}
    except ValueError:
        raise EvSimError("malformed STATUS reply %r" % line) from None


class EvSim:
    def __init__(self, url, baudrate=115200, timeout=2.0, port=None):
        self.url = url
        self._port = port or serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)

    def command(self, line):
        """Send one command line; return its reply line (without newline). ERR raises."""
        self._port.write(line.encode("ascii") + b"\n")
        self._port.flush()
        reply = self._port.readline()
        if not reply.endswith(b"\n"):
            raise EvSimError(
                "no reply from EV simulator %s to %r" % (self.url, line),
                hint="check the cable and the simulator's baud rate",
            )
        text = reply.decode("ascii", "replace").strip()
        if text.startswith("ERR"):
            raise EvSimError("EV simulator refused %r: %s" % (line, text))
        return text

    def ident(self):
        return self.command("ID")

    def set_cp(self, state):
        if state not in CP_STATES:
            raise ConfigError("CP state %r is not one of %s" % (state, " ".join(CP_STATES)))
        reply = self.command("CP %s" % state)
        if reply != "OK CP %s" % state:
            raise EvSimError("unexpected reply %r to CP %s" % (reply, state))

    def status(self):
        return parse_status(self.command("STATUS"))

    def close(self):
        self._port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
