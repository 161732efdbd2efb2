"""The charger's components besides the Linux slot: microcontrollers flashed over UART.

Each MCU is one `[components.<id>]` table in the agent config naming its protocol and
wiring; a protocol is an adapter class with a small contract (below), picked from PROTOCOLS
or from an installed plug-in (entry point group `charger_update.protocols`, or
"package.module:Class" as the protocol name). The decisions (what to flash, what a
rollback restores) are agent/core/components.py's; this package only does the I/O.

    class Adapter:
        revert = "reset" | "reflash"          # how it goes back (core/components.py)
        authoritative = False | True          # running() holds even after a torn write
        def __init__(self, mcu_id, table, stack, cfg): ...
        def running(self) -> (version or None, confirmed bool)  # never raises
        def write(self, image, address, version, progress) # flash, start, wait running
        def confirm(self)                                  # make the running image stay
        def reset(self)                                    # restart the MCU
        tick                                 # set by the agent: call it while waiting

`tick()` tells the agent it is still alive (it pets the watchdog): an adapter calls it
between attempts and while it polls, so no wait of its own outlasts the board's watchdog.
"""

import importlib
import time

from agent.core.components import REVERT_BY_REFLASH, REVERT_BY_RESET
from agent.core.errors import ConfigError, Transient

ENTRY_POINT_GROUP = "charger_update.protocols"
PROTOCOLS = {
    "stm32-rom": "agent.components:Stm32Component",
    "mcuboot-smp": "agent.components:McubootComponent",
}


class ComponentError(Transient):
    reason = "component"


def board_components(cfg):
    """{mcu id: table} from the config's [components.*] tables, each with a protocol."""
    tables = cfg.section("components")
    for mcu_id, table in tables.items():
        if not isinstance(table, dict) or not table.get("protocol"):
            raise ConfigError("%s: [components.%s] needs protocol and port" % (cfg.path, mcu_id),
                              hint="see docs/components.md")  # fmt: skip
    return dict(tables)


def _entry_points():
    try:
        from importlib.metadata import entry_points
    except ImportError:  # pragma: no cover
        return {}
    eps = entry_points()
    group = eps.select(group=ENTRY_POINT_GROUP) if hasattr(eps, "select") else ()
    return dict((ep.name, ep.value) for ep in group)


def adapter(mcu_id, cfg, stack=None, tick=None):
    """The protocol adapter for MCU `mcu_id` of this board; tick() is called while it waits."""
    table = board_components(cfg).get(mcu_id)
    if table is None:
        raise ConfigError("%s: no [components.%s] table" % (cfg.path, mcu_id))
    protocol = table["protocol"]
    spec = PROTOCOLS.get(protocol) or _entry_points().get(protocol) or protocol
    if ":" not in spec:
        raise ConfigError("MCU %s: unknown protocol %r" % (mcu_id, protocol),
                          hint="use %s or a plug-in" % ", ".join(sorted(PROTOCOLS)))  # fmt: skip
    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError("MCU %s: protocol %s cannot be loaded: %s" % (mcu_id, spec, e)) from None
    found = cls(mcu_id, table, stack, cfg)
    found.tick = tick or _alive
    return found


def _alive():
    pass


def wait_version(ask, version, timeout, tick=None, clock=time.monotonic, wait=time.sleep):
    """Ask until the MCU reports `version` (it needs a moment to start); the last answer."""
    deadline = clock() + timeout
    seen = None
    while True:
        if tick:
            tick()
        try:
            seen = ask()
        except Transient:
            seen = None
        if seen == version or clock() >= deadline:
            return seen
        wait(0.1)  # the application's start-up: poll its answer, bounded by the deadline


def _line(mcu_id, table, key, port, cfg):
    """The [components.<id>] line `key` (boot0, nreset); relative GPIO paths are resolved
    against the config's directory."""
    from agent.components.lines import parse_line

    spec = table.get(key, "")
    if isinstance(spec, str) and spec.lstrip("!").startswith("gpio:"):
        invert = "!" if spec.startswith("!") else ""
        path = spec.lstrip("!")[5:]
        if not path.startswith("/"):
            spec = invert + "gpio:" + cfg.resolve(path)
    return parse_line(spec, port, "[components.%s] %s" % (mcu_id, key))


class Stm32Component:
    """An MCU without a bootloader of its own, flashed through the STM32 ROM bootloader.
    Its running version comes from the charging stack, which owns the MCU's protocol: an
    application that answers after a torn write is not proof of a whole image, so after a
    power cut the agent's record (None from the first byte) decides."""

    revert = REVERT_BY_REFLASH
    authoritative = False
    tick = staticmethod(_alive)

    def __init__(self, mcu_id, table, stack, cfg):
        self.id, self.table, self.stack = mcu_id, table, stack
        if not table.get("port"):
            raise ConfigError("[components.%s] needs port" % mcu_id)
        self.port = cfg.resolve(table["port"]) if "://" not in table["port"] else table["port"]
        self.cfg = cfg

    def running(self):
        if self.stack is None:
            return None, True
        try:
            reply = self.stack.request("component", name=self.id)
        except Transient:
            return None, True
        return (reply.get("version") if reply.get("ok") else None), True

    def _line(self, key, port):
        return _line(self.id, self.table, key, port, self.cfg)

    def write(self, image, address, version, progress=None):
        from agent.components.stm32 import Stm32Rom, open_port

        port = open_port(self.port, int(self.table.get("baudrate", 115200)))
        try:
            rom = Stm32Rom(port, self._line("boot0", port), self._line("nreset", port),
                           timeout=float(self.table.get("timeout_s", 1.0)),
                           retries=int(self.table.get("retries", 3)),
                           page_size=self.table.get("page_size"))  # fmt: skip
            rom.enter()
            rom.flash(image, address, progress)
            rom.start(address)
        finally:
            port.close()
        timeout = float(self.table.get("start_timeout_s", 10))
        seen = wait_version(lambda: self.running()[0], version, timeout, self.tick)
        if seen != version:
            raise ComponentError("MCU %s was written but answers %r, not version %s"
                                 % (self.id, seen, version))  # fmt: skip

    def confirm(self):
        pass  # one copy of flash: what was written and verified stays

    def reset(self):
        from agent.components.stm32 import Stm32Rom, open_port

        port = open_port(self.port, int(self.table.get("baudrate", 115200)))
        try:
            Stm32Rom(port, self._line("boot0", port), self._line("nreset", port)).reset(False)
        finally:
            port.close()


class McubootComponent:
    """An MCU with MCUboot (swap with revert) and an SMP server on its UART. MCUboot boots
    only an image whose hash checks, and its image list says which one runs and whether it
    is confirmed: after any power cut that list, not the agent's record, is the truth."""

    revert = REVERT_BY_RESET
    authoritative = True

    def __init__(self, mcu_id, table, stack, cfg):
        from agent.components.mcuboot import Mcuboot

        if not table.get("port"):
            raise ConfigError("[components.%s] needs port" % mcu_id)
        port = table["port"] if "://" in table["port"] else cfg.resolve(table["port"])
        self.id, self.table, self.cfg, self.port = mcu_id, table, cfg, port
        self.baudrate = int(table.get("baudrate", 115200))
        self.smp = Mcuboot(port, self.baudrate, float(table.get("timeout_s", 2.5)),
                           retries=int(table.get("retries", 2)),
                           boot_timeout=float(table.get("start_timeout_s", 10)))  # fmt: skip
        _line(mcu_id, table, "nreset", object(), cfg)  # a bad spec fails now, not at a reset

    @property
    def tick(self):
        return self.smp.tick

    @tick.setter
    def tick(self, fn):
        self.smp.tick = fn  # called between SMP attempts and while waiting for a boot

    def running(self):
        from agent.components.mcuboot import McubootError

        try:
            seen = self.smp.running()
        except McubootError:  # silent: no application, or one that hangs
            return None, False
        return (seen[0], seen[1]) if seen else (None, False)

    def write(self, image, address, version, progress=None):
        self.smp.flash(image, version, progress)

    def confirm(self):
        self.smp.confirm()

    def reset(self):
        """SMP reset; an application that hangs cannot take it, then NRST (when wired)."""
        from agent.components.mcuboot import McubootError

        try:
            self.smp.reset()
        except McubootError:
            if not self.table.get("nreset"):
                raise
            self._pulse_nreset()

    def _pulse_nreset(self):
        import serial

        try:  # opened for DTR/RTS lines (and so no one else talks to the MCU meanwhile)
            port = serial.serial_for_url(self.port, baudrate=self.baudrate, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as e:
            raise ComponentError("cannot open MCU port %s: %s" % (self.port, e)) from None
        try:
            line = _line(self.id, self.table, "nreset", port, self.cfg)
            line.set(False)
            time.sleep(0.01)  # the reset pulse's width, not a wait for anything
            line.set(True)
        finally:
            port.close()
