"""Boot ROM of the virtual board: what the bootloader and the supervisor do on a real board.

At every power-on or reset it reads the boot environment through bootloader_iface's
bootloader side (the same selection and attempt counting as the sample U-Boot script),
extracts the firmware found in the chosen slot, and runs its init with the console on the
board's pty. A hardware watchdog (the systemd notify protocol: `WATCHDOG=1` datagrams on
$NOTIFY_SOCKET) resets the board when the running firmware stops petting it.

Like a SoC's reset-cause register read by the boot script, the kernel command line says why
this boot happened: `charger.reset=power-on` (this process just started: the supply came on),
`watchdog` (the watchdog fired), `panic` (the firmware died), `reboot` (it asked for one).
Each boot gets a fresh id in run/boot_id, as Linux's /proc/sys/kernel/random/boot_id.

Run as `python -m hil.virtual.bootrom BOARD_DIR CONSOLE_FD`; the board controller
(hil/virtual/board.py) starts it in its own session so a power cut kills the whole tree.
"""

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid

from hil import lifeline
from hil.virtual import layout

PLUG = threading.Lock()  # held while a firmware starts and its group is recorded
FIRMWARE = [None]  # the process group of the firmware running now


class ConsoleOut:
    """Writes to the board's serial line (pty master) and to console.log; never blocks."""

    def __init__(self, fd, log_path):
        self.fd = fd
        os.set_blocking(fd, False)
        self.log = open(log_path, "ab", buffering=0)
        self.lock = threading.Lock()

    def write(self, data):
        with self.lock:
            self.log.write(data)
            out = data.replace(b"\n", b"\r\n")
            while out:
                try:
                    out = out[os.write(self.fd, out) :]
                except BlockingIOError:
                    # A slow reader gets a moment to catch up; a board nobody listens to
                    # must not hang on its console, so after that the log alone keeps it.
                    if not select.select([], [self.fd], [], 1.0)[1]:
                        return

    def line(self, text):
        self.write(("[rom] %s\n" % text).encode())


def extract(image, rootfs):
    """Unpack the slot's firmware (a tar; trailing bytes in the slot are ignored)."""
    if os.path.exists(rootfs):
        shutil.rmtree(rootfs)
    os.makedirs(rootfs)
    # The "data" filter refuses absolute paths and links out of the tree (Python >= 3.9.17).
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(image, "r:") as tar:
        tar.extractall(rootfs, **safe)
    if not os.path.exists(os.path.join(rootfs, "firmware.toml")):
        raise tarfile.TarError("no firmware.toml in the image")


def boot_once(board, console, notify, reset):
    """One boot; returns the cause of the reset that ends it."""
    slot = layout.bootloader_select(board, reset)
    if slot is None:
        console.line("no bootable slot left: halted")
        threading.Event().wait()
    console.line("booting slot %s" % slot)
    rootfs = os.path.join(board, "run", "rootfs")
    try:
        extract(layout.slot_image(board, slot), rootfs)
    except (OSError, tarfile.TarError) as e:
        console.line("slot %s holds no bootable firmware (%s): reset" % (slot, e))
        return "panic"
    with open(os.path.join(board, "run", "cmdline"), "w") as f:
        f.write("console=ttyS0 charger.slot=%s charger.reset=%s\n" % (slot, reset))
    with open(os.path.join(board, "run", "boot_id"), "w") as f:
        f.write(str(uuid.uuid4()) + "\n")
    env = dict(os.environ, PYTHONPATH=rootfs, BOARD_DIR=board, CHARGER_SLOT=slot)
    env["NOTIFY_SOCKET"] = notify.getsockname()
    # As systemd's WatchdogSec= does: tells the agent how often it must pet.
    env["WATCHDOG_USEC"] = str(int(layout.watchdog_s(board) * 1e6))
    with PLUG:  # a power cut now (pull_plug) waits until the firmware's group is known
        proc = start_firmware(rootfs, env)
        with open(os.path.join(board, "run", "firmware.pgid"), "w") as f:
            f.write(str(proc.pid))
        FIRMWARE[0] = proc.pid
    threading.Thread(target=pump, args=(proc.stdout, console), daemon=True).start()
    reason, cause = supervise(proc, notify, layout.watchdog_s(board))
    console.line("reset (%s)" % reason)
    return cause


def start_firmware(rootfs, env):
    return subprocess.Popen(
        [sys.executable, "-m", "charger_fw.init"],
        cwd=rootfs,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Its own process group, so a watchdog reset takes the whole firmware down (the
        # agent too); power-off kills this group as well (board.py).
        preexec_fn=os.setpgrp,
    )


def pump(stream, console):
    for line in iter(stream.readline, b""):
        console.write(line)


def supervise(proc, notify, watchdog_s):
    """Wait until the firmware exits or stops petting the watchdog; kill it in the latter case."""
    deadline = time.monotonic() + watchdog_s
    notify.settimeout(0.2)
    while proc.poll() is None:
        try:
            if b"WATCHDOG=1" in notify.recv(256):
                deadline = time.monotonic() + watchdog_s
        except socket.timeout:
            pass
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "watchdog: no sign of life for %ss" % watchdog_s, "watchdog"
    # init exits 0 after a requested reboot; anything else is the firmware dying (a panic).
    cause = "reboot" if proc.returncode == 0 else "panic"
    return "firmware exited with %s" % proc.returncode, cause


def pull_plug():
    """What a power cut does: the firmware's process group and this one die at once. Under
    PLUG, so no firmware is started between the two kills."""
    PLUG.acquire()
    if FIRMWARE[0] is not None:
        try:
            os.killpg(FIRMWARE[0], signal.SIGKILL)
        except OSError:
            pass  # it had ended
    os.killpg(os.getpgrp(), signal.SIGKILL)


def main(argv=None):
    board, console_fd = (argv or sys.argv[1:])[:2]
    board = os.path.abspath(board)
    # The test process that powered the board on was killed: the board goes dark with it.
    lifeline.on_parent_death(pull_plug)
    os.makedirs(os.path.join(board, "run"), exist_ok=True)
    console = ConsoleOut(int(console_fd), os.path.join(board, "console.log"))
    path = os.path.join(board, "run", "notify.sock")
    if os.path.exists(path):
        os.unlink(path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(path)
    console.line("power on")
    reset = "power-on"
    while True:
        reset = boot_once(board, console, notify, reset)


if __name__ == "__main__":
    main()
