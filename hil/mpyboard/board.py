"""The virtual MicroPython board, controlled from the host: power, reset and its console.

Power on runs the emulated ESP-IDF bootloader (bootloader.py: otadata rules, image
validation) and starts the app it picked as a MicroPython unix-port process with a bounded
heap (`-X heapsize`), its flash on files (esp32.py). When the app ends, for whatever reason
(machine.reset(), a panic, an exception), that is a reset: the bootloader runs again, as on
the chip. Power off kills the process at once (SIGKILL), like pulling the plug. Like the
chip's reset-reason register, MPYBOARD_RESET tells the app why it started: power-on (the
supply came on), reboot (the app asked: exit 0), panic (it died).

Invariant: the board owns exactly one app process at a time and close() leaves none behind.
"""

import json
import os
import signal
import subprocess
import threading

from hil.mpyboard import deps, flash

HERE = os.path.dirname(os.path.abspath(__file__))


class MpyBoard:
    def __init__(self, board_dir, heap="96K"):
        self.dir = os.path.abspath(board_dir)
        self.flash_dir = os.path.join(self.dir, "flash")
        self.heap = heap
        self.log_path = os.path.join(self.dir, "console.log")
        self.proc = None
        self.powered = False
        self.thread = None
        self.lock = threading.Condition()
        self.lines = []
        self.boots = 0
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
        reset = "power-on"
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
            code = self._app(descriptor, reset)
            self._console("[rom] reset (app exited with %s)" % code)
            reset = "reboot" if code == 0 else "panic"

    def _bootloader(self):
        _, bootloader, _, _ = flash.modules(self.flash_dir)
        return bootloader.boot()

    def _app(self, descriptor, reset):
        env = dict(os.environ, MICROPYPATH=deps.micropath(HERE), ESP32EMU_FLASH=self.flash_dir,
                   MPYBOARD_DIR=self.dir, MPYBOARD_APP=json.dumps(descriptor),
                   MPYBOARD_RESET=reset)  # fmt: skip
        cmd = [deps.micropython_bin(), "-X", "heapsize=%s" % self.heap,
               os.path.join(HERE, "firmware.py")]  # fmt: skip
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
