"""Controls a virtual board from the outside, as a bench's relay and USB-serial adapter do.

The serial line is a pty pair that outlives power cycles (like a USB-serial adapter stays
plugged in): the board writes to the master, the rig opens the slave path with pyserial.
Power off kills the whole process tree at once (SIGKILL to its session): no clean shutdown,
exactly like pulling the plug.
"""

import os
import signal
import subprocess
import sys
import threading
import tty

from hil import lifeline
from hil.drivers.sim_devices import EvSimDevice, RelaySim
from hil.emulators.mcuboot_dev import McubootDevice
from hil.emulators.stm32_rom import Stm32Rom

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class VirtualBoard:
    def __init__(self, board_dir):
        self.dir = os.path.abspath(board_dir)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.console_path = os.ttyname(self.slave)
        self.proc = None
        self.switched = threading.Condition()
        self.switches = 0  # power changes applied through the relay
        ev_dir = os.path.join(self.dir, "ev")
        os.makedirs(ev_dir, exist_ok=True)
        # The bench hardware around the board, simulated on ptys: the rig drives them with
        # the same pyserial drivers as on a real bench (hil/drivers).
        self.relay = RelaySim(channels=1, on_change=self.power_input)
        self.ev = BoardEvSim(os.path.join(ev_dir, "cp"))
        # The safety MCU (an STM32 with its ROM bootloader) on its own UART, BOOT0 and NRST
        # wired to the controller's GPIOs (FIFOs here); its flash survives power cuts.
        os.makedirs(os.path.join(self.dir, "flash"), exist_ok=True)
        lines, flash = (
            os.path.join(self.dir, "mcu-lines"),
            os.path.join(self.dir, "flash", "mcu.bin"),
        )
        self.mcu = Stm32Rom(lines_dir=lines, flash_path=flash).start()
        # The energy meter MCU: MCUboot (swap with revert) with an SMP server on its UART,
        # NRST on a controller GPIO; the rig keeps its two slots across power cuts.
        self.meter = McubootDevice(lines_dir=os.path.join(self.dir, "meter-lines")).start()

    @property
    def is_on(self):
        return self.proc is not None and self.proc.poll() is None

    def power_on(self):
        if self.is_on:
            return
        run = os.path.join(self.dir, "run")
        for name in os.listdir(run) if os.path.isdir(run) else ():
            if name != "rootfs":
                os.unlink(os.path.join(run, name))
        env = lifeline.parent_env(dict(os.environ, PYTHONPATH=REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hil.virtual.bootrom", self.dir, str(self.master)],
            pass_fds=(self.master,),
            start_new_session=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "bootrom.err"), "ab"),
        )

    def power_off(self):
        """Pull the plug: every process of the board dies at once."""
        if self.proc is None:
            return
        groups = [self.proc.pid]
        try:
            with open(os.path.join(self.dir, "run", "firmware.pgid")) as f:
                groups.append(int(f.read()))  # the firmware runs in its own process group
        except (OSError, ValueError):
            pass
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def power_input(self, channel, on):
        """Wired to the relay simulator: the supply line of the board (and its MCUs)."""
        self.mcu.power(on)
        self.meter.power(on)
        (self.power_on if on else self.power_off)()
        with self.switched:
            self.switches += 1
            self.switched.notify_all()

    def close(self):
        self.power_off()
        self.relay.close()
        self.ev.close()
        self.mcu.close()
        self.meter.close()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BoardEvSim(EvSimDevice):
    """The EV simulator on the board's control-pilot line: the CP state the rig sets is what
    the charging stack measures (a file standing in for the pilot voltage)."""

    def __init__(self, cp_path):
        self.cp_path = cp_path
        EvSimDevice.__init__(self)
        self._write("A")

    def _write(self, state):
        with open(self.cp_path + ".tmp", "w") as f:
            f.write(state)
        os.replace(self.cp_path + ".tmp", self.cp_path)

    def _publish(self, event):
        if event[0] == "cp":
            self._write(event[1])
        EvSimDevice._publish(self, event)
