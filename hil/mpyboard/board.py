"""The virtual MicroPython board, controlled from the host: power, reset and its console.

Power on runs the emulated ESP-IDF bootloader (bootloader.py: otadata rules, image
validation) and starts the app it picked as a MicroPython unix-port process with a bounded
heap (`-X heapsize`), its flash on files (esp32.py). When the app ends, for whatever reason
(machine.reset(), a panic, an exception), that is a reset: the bootloader runs again, as on
the chip. Power off kills the process at once (SIGKILL), like pulling the plug. The app reads
the chip's reset cause as machine.reset_cause() would give it (MPYBOARD_RESET): PWRON_RESET
after power on, HARD_RESET after the app ended (MicroPython's esp32 port reports esp_restart()
and a panic alike). A soft reset (machine.soft_reset(), firmware.py: the app ends with
SOFT_RESET_EXIT) is no reset of the chip: the same app starts again, the bootloader does not
run and otadata stays as it was, and the cause reads SOFT_RESET (the esp32 port's
is_soft_reset) until the next real reset.

Invariant: the board owns exactly one app process at a time and close() leaves none behind.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import threading

from hil import lifeline
from hil.mpyboard import flash, romfs

HERE = os.path.dirname(os.path.abspath(__file__))
PWRON_RESET, HARD_RESET, SOFT_RESET = 1, 2, 5  # machine.reset_cause() values (esp32 stubs)
SOFT_RESET_EXIT = 5  # the app's exit status for machine.soft_reset() (firmware.py)


class MpyBoard:
    def __init__(self, board_dir, heap="96K"):
        self.dir = os.path.abspath(board_dir)
        self.flash_dir = os.path.join(self.dir, "flash")
        self.heap = heap
        self.romfs = romfs.build()  # the code the app runs, precompiled, outside the heap
        self.log_path = os.path.join(self.dir, "console.log")
        self.proc = None
        self.powered = False
        self.thread = None
        self.lock = threading.Condition()
        self.lines = []
        self.boots = 0
        self.reset_cause = PWRON_RESET
        self.on_line = None  # fn(line) for tests

    # -- power ------------------------------------------------------------------------------

    def power_on(self):
        with self.lock:
            if self.powered:
                return
            self.powered = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def power_off(self):
        with self.lock:
            self.powered = False
            proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.thread is not None:
            self.thread.join(10)
            self.thread = None
        self._console("[rom] power off")

    def close(self):
        self.power_off()

    # -- boot loop --------------------------------------------------------------------------

    def _run(self):
        self._console("[rom] power on")
        self.reset_cause = PWRON_RESET
        while True:
            with self.lock:
                if not self.powered:
                    return
            label, descriptor = self._bootloader()
            if label is None:
                self._console("[rom] no bootable app partition: halted")
                with self.lock:
                    self.lock.wait_for(lambda: not self.powered)
                return
            self.boots += 1
            self._console("[rom] booting %s (%s)" % (label, descriptor.get("version")))
            code = self._app(descriptor)
            while code == SOFT_RESET_EXIT:  # the VM again, in the same boot of the chip
                self.reset_cause = SOFT_RESET
                self._console("[rom] soft reset: %s starts again, no boot" % label)
                code = self._app(descriptor)
            self.reset_cause = HARD_RESET
            self._console("[rom] reset (app exited with %s)" % code)

    def _bootloader(self):
        _, bootloader, _, _ = flash.modules(self.flash_dir)
        return bootloader.boot()

    def _app(self, descriptor):
        # The OTA writes run in this CPython, off the app's heap, as the chip's C does
        # (esp32.py, esp32host.py).
        host = " ".join(shlex.quote(p) for p in (sys.executable, HERE + "/esp32host.py"))
        env = dict(os.environ, ESP32EMU_FLASH=self.flash_dir, MPYBOARD_DIR=self.dir,
                   MPYBOARD_APP=json.dumps(descriptor), ESP32EMU_HOST=host,
                   MPYBOARD_RESET=str(self.reset_cause))  # fmt: skip
        env = lifeline.parent_env(env)  # the app dies with this process (romboot.py)
        env.pop("MICROPYPATH", None)  # code comes from the ROMFS image only
        cmd = [sys.executable, os.path.join(HERE, "romboot.py"), self.romfs,
               "-X", "heapsize=%s" % self.heap, os.path.join(HERE, "boot.py")]  # fmt: skip
        with self.lock:
            if not self.powered:
                return None
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            proc = self.proc
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._console(line)
            if line.startswith("POWER CUT") and self.on_line is None:
                threading.Thread(target=self._cut_and_restore, daemon=True).start()
            if self.on_line is not None:
                self.on_line(line)
        proc.wait()
        proc.stdout.close()
        return proc.returncode

    def _cut_and_restore(self):
        self.power_off()
        self.power_on()

    def _console(self, line):
        with self.lock:
            self.lines.append(line)
            self.lock.notify_all()
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def text(self):
        with self.lock:
            return "\n".join(self.lines)

    def wait_line(self, pattern, timeout, anywhere=False):
        """The first console line (from now on, or anywhere in the log) containing `pattern`, or
        TimeoutError."""
        with self.lock:
            start = 0 if anywhere else len(self.lines)
            found = []

            def seen():
                for line in self.lines[start:]:
                    if pattern in line:
                        found.append(line)
                        return True
                return False

            if not self.lock.wait_for(seen, timeout):
                raise TimeoutError("no console line with %r within %ss" % (pattern, timeout))
            return found[0]
