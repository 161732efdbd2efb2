"""A HIL rig described in one TOML file: console, power switch, EV simulator, network, board.

Invariant: a Rig that loaded is complete for its board kind: every driver it will open has
what it needs (a bench rig names real ports; a virtual or QEMU rig may leave the console to
the board, which creates it at run time). Anything wrong raises ConfigError naming the file,
the key and what to write instead. Opening a driver is separate from loading, so a rig file
can be checked on a machine without the hardware.
"""

import sys

from agent.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

BOARD_KINDS = ("virtual", "qemu-uboot", "bench")
POWER_KINDS = ("lcus-relay", "virtual", "none")
NETWORK_KINDS = ("proxy", "none")
# Boards that create their own console and power at run time (pty, QEMU chardev socket).
SELF_WIRED_BOARDS = ("virtual", "qemu-uboot")
DEFAULT_BAUDRATE = 115200


class Section:
    """One table of the rig file; attribute access to its keys, the raw dict kept in `raw`."""

    def __init__(self, raw):
        self.raw = dict(raw)

    def __getattr__(self, key):
        try:
            return self.raw[key]
        except KeyError:
            raise AttributeError(key) from None

    def get(self, key, default=None):
        return self.raw.get(key, default)


class Rig:
    def __init__(self, raw, path="<rig>"):
        self.path = path
        self.raw = raw
        self.name = self._str(raw, "name", "", where="top level")
        self.board = self._board()
        self.console = self._console()
        self.power = self._power()
        self.evsim = self._evsim()
        self.network = self._network()
        self.mcu = self._mcu()

    # -- opening drivers ----------------------------------------------------------------------

    def open_console(self, url=None, log_path=None):
        """The console driver; `url` overrides [console] url (a board wired at run time)."""
        from hil.drivers.console import Console

        url = url or self.console.url
        if not url:
            raise self._error("[console] url is empty and the board gave none")
        return Console(url, baudrate=self.console.baudrate, log_path=log_path)

    def open_power(self):
        """The power switch for kind lcus-relay; None for virtual/none (the board owns it)."""
        if self.power.kind != "lcus-relay":
            return None
        from hil.drivers.power import LcusRelay

        return LcusRelay(self.power.url, channel=self.power.channel, baudrate=self.power.baudrate)

    def open_evsim(self):
        """The EV simulator driver, or None when the rig has none."""
        if not self.evsim.url:
            return None
        from hil.drivers.evsim import EvSim

        return EvSim(self.evsim.url, baudrate=self.evsim.baudrate)

    def open_mcu(self):
        """The MCU's bootloader driver (docs/components.md), or None without [mcu]."""
        if not self.mcu.url:
            return None
        if self.mcu.protocol == "mcuboot-smp":
            from agent.components.mcuboot import Mcuboot

            return Mcuboot(self.mcu.url, self.mcu.baudrate)
        from agent.components.lines import parse_line
        from agent.components.stm32 import Stm32Rom, open_port

        port = open_port(self.mcu.url, self.mcu.baudrate)
        return Stm32Rom(port, parse_line(self.mcu.boot0, port, "[mcu] boot0"),
                        parse_line(self.mcu.nreset, port, "[mcu] nreset"))  # fmt: skip

    # -- validation ---------------------------------------------------------------------------

    def _error(self, message, hint=None):
        return ConfigError("%s: %s" % (self.path, message), hint=hint)

    def _table(self, name, required):
        value = self.raw.get(name, {})
        if not isinstance(value, dict):
            raise self._error("[%s] must be a table" % name)
        if required and name not in self.raw:
            raise self._error("[%s] is missing" % name, hint="see docs/hil.md for a sample rig")
        return value

    def _str(self, table, key, default, where):
        value = table.get(key, default)
        if not isinstance(value, str):
            raise self._error("%s: %s must be a string, not %r" % (where, key, value))
        return value

    def _int(self, table, key, default, where, low=0):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self._error("%s: %s must be an integer >= %d, not %r" % (where, key, low, value))
        return value

    def _kind(self, name, table, kinds, default):
        kind = self._str(table, "kind", default, where="[%s]" % name)
        if kind not in kinds:
            raise self._error(
                "[%s] kind = %r is not known" % (name, kind),
                hint="use one of: %s" % ", ".join(kinds),
            )
        return kind

    def _board(self):
        table = self._table("board", required=True)
        if "kind" not in table:
            raise self._error("[board] is missing kind", hint="one of: %s" % ", ".join(BOARD_KINDS))
        raw = dict(table)
        raw["kind"] = self._kind("board", table, BOARD_KINDS, None)
        return Section(raw)

    def _console(self):
        table = self._table("console", required=False)
        url = self._str(table, "url", "", where="[console]")
        if not url and self.board.kind not in SELF_WIRED_BOARDS:
            raise self._error(
                "[console] url is required for a %s board" % self.board.kind,
                hint='e.g. url = "/dev/ttyUSB0", "socket://host:port" or "loop://"',
            )
        raw = dict(table)
        raw["url"] = url
        raw["baudrate"] = self._int(table, "baudrate", DEFAULT_BAUDRATE, "[console]", low=1)
        raw["log"] = self._str(table, "log", "", where="[console]")
        return Section(raw)

    def _power(self):
        table = self._table("power", required=False)
        default = "virtual" if self.board.kind in SELF_WIRED_BOARDS else "none"
        kind = self._kind("power", table, POWER_KINDS, default)
        raw = dict(table)
        raw["kind"] = kind
        raw["url"] = self._str(table, "url", "", where="[power]")
        raw["channel"] = self._int(table, "channel", 1, "[power]", low=1)
        raw["baudrate"] = self._int(table, "baudrate", 9600, "[power]", low=1)
        if kind == "lcus-relay":
            if not raw["url"]:
                raise self._error(
                    '[power] kind = "lcus-relay" needs url', hint='e.g. url = "/dev/ttyUSB1"'
                )
            if raw["channel"] > 8:
                raise self._error("[power] channel %d: LCUS boards have 1..8" % raw["channel"])
        elif kind == "virtual" and self.board.kind == "bench":
            raise self._error(
                '[power] kind = "virtual" needs a virtual or qemu-uboot board',
                hint='a bench switches power with kind = "lcus-relay" (or "none")',
            )
        return Section(raw)

    def _evsim(self):
        table = self._table("evsim", required=False)
        raw = dict(table)
        raw["url"] = self._str(table, "url", "", where="[evsim]")
        raw["baudrate"] = self._int(table, "baudrate", DEFAULT_BAUDRATE, "[evsim]", low=1)
        return Section(raw)

    def _network(self):
        table = self._table("network", required=False)
        raw = dict(table)
        raw["kind"] = self._kind("network", table, NETWORK_KINDS, "none")
        return Section(raw)


MCU_PROTOCOLS = ("stm32-rom", "mcuboot-smp")


def _mcu_check(rig, table):
    raw = dict(table)
    raw["url"] = rig._str(table, "url", "", where="[mcu]")
    raw["id"] = rig._str(table, "id", "safety", where="[mcu]")
    raw["protocol"] = rig._str(table, "protocol", "stm32-rom", where="[mcu]")
    if raw["protocol"] not in MCU_PROTOCOLS:
        raise rig._error("[mcu] protocol = %r is not known" % raw["protocol"],
                         hint="use one of: %s" % ", ".join(MCU_PROTOCOLS))  # fmt: skip
    raw["baudrate"] = rig._int(table, "baudrate", DEFAULT_BAUDRATE, "[mcu]", low=1)
    raw["boot0"] = rig._str(table, "boot0", "", where="[mcu]")
    raw["nreset"] = rig._str(table, "nreset", "", where="[mcu]")
    if "mcu" in rig.raw and not raw["url"] and rig.board.kind == "bench":
        raise rig._error("[mcu] url is required for a bench board",
                         hint='e.g. url = "/dev/ttyUSB3"')  # fmt: skip
    return Section(raw)


Rig._mcu = lambda self: _mcu_check(self, self._table("mcu", required=False))


def load(path):
    """Load and check a rig file; ConfigError on anything missing or malformed."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            "rig file %s does not exist" % path, hint="see hil/rigs/ for samples"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("%s is not valid TOML: %s" % (path, e)) from None
    except OSError as e:
        raise ConfigError("cannot read rig file %s: %s" % (path, e.strerror)) from None
    return Rig(raw, str(path))
