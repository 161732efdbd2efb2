"""Control lines around an MCU: BOOT0 and NRST through DTR/RTS of the serial adapter, a GPIO
value file (sysfs `/sys/class/gpio/gpioN/value`, or a FIFO an emulator listens on), or a
command (e.g. libgpiod's `gpioset`).

Invariant: a line is set to a logical level (True = asserted = the MCU pin high) and the
adapter alone knows the wiring (an inverted transistor stage, an active-low DTR): `invert`
is applied here and nowhere else. A spec string names a line in the config:
`dtr`, `!rts`, `gpio:/sys/class/gpio/gpio17/value`, `cmd:gpioset gpiochip0 17={level}`.
"""

import subprocess

from agent.core.errors import ConfigError, Transient


class LineError(Transient):
    reason = "mcu-line"


class Line:
    """The contract: set(level) drives the pin; name says which one in messages."""

    name = "line"

    def set(self, level):
        raise NotImplementedError


class SerialLine(Line):
    """DTR or RTS of the serial port the MCU's UART is on (a pyserial port object)."""

    def __init__(self, port, which, invert=False):
        self.port, self.which, self.invert = port, which, invert
        self.name = ("!" if invert else "") + which

    def set(self, level):
        try:
            setattr(self.port, self.which, bool(level) != self.invert)
        except OSError as e:
            raise LineError(
                "cannot drive %s on %s: %s" % (self.which, getattr(self.port, "port", "?"), e),
                hint="a pty or a USB adapter without modem lines cannot; wire a GPIO instead",
            ) from None


class GpioFile(Line):
    """A sysfs GPIO value file (or a FIFO): writes "1" or "0"."""

    def __init__(self, path, invert=False):
        self.path, self.invert = path, invert
        self.name = ("!" if invert else "") + "gpio:" + path

    def set(self, level):
        try:
            with open(self.path, "w") as f:
                f.write("1" if bool(level) != self.invert else "0")
        except OSError as e:
            raise LineError("cannot set GPIO %s: %s" % (self.path, e.strerror)) from None


class CommandLine(Line):
    """A command run with {level} replaced by 1 or 0, e.g. `gpioset gpiochip0 17={level}`."""

    def __init__(self, words, invert=False):
        self.words, self.invert = list(words), invert
        self.name = ("!" if invert else "") + "cmd:" + " ".join(words)

    def set(self, level):
        value = "1" if bool(level) != self.invert else "0"
        argv = [w.replace("{level}", value) for w in self.words]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise LineError("line command %s failed: %s" % (argv[0], e)) from None
        if done.returncode != 0:
            raise LineError("line command %s exited %d: %s"
                            % (argv[0], done.returncode, done.stderr[-200:]))  # fmt: skip


class NoLine(Line):
    """Nothing wired: the MCU is put into its bootloader some other way."""

    name = "none"

    def set(self, level):
        pass


def parse_line(spec, port=None, where="line"):
    """A Line from a config spec; port is the pyserial port for dtr/rts."""
    if spec in (None, "", "none"):
        return NoLine()
    if not isinstance(spec, str):
        raise ConfigError("%s must be a string like 'dtr', '!rts' or 'gpio:PATH'" % where)
    invert = spec.startswith("!")
    body = spec[1:] if invert else spec
    if body in ("dtr", "rts"):
        if port is None:
            raise ConfigError("%s = %r needs the serial port to be open" % (where, spec))
        return SerialLine(port, body, invert)
    if body.startswith("gpio:") and len(body) > 5:
        return GpioFile(body[5:], invert)
    if body.startswith("cmd:") and body[4:].split():
        return CommandLine(body[4:].split(), invert)
    raise ConfigError(
        "%s = %r is not a line" % (where, spec),
        hint="use dtr, rts, gpio:/sys/class/gpio/gpioN/value or cmd:COMMAND {level}; "
        "prefix ! to invert",
    )
