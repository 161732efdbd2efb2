"""The QEMU rig: Debian's real U-Boot (qemu_arm64) in qemu-system-aarch64, console over pyserial.

Invariant: a started QemuUBoot always has exactly one QEMU process, known by PID, and it is
killed when the rig stops, the `with` block ends, or the interpreter exits (an idle U-Boot
prompt burns a core). Power is the process: `power_cycle` kills it and starts a new one on
the same flash images, so whatever U-Boot or fw_setenv wrote survives like on real flash.

Flash layout (pflash, 64 MiB each): flash0.img holds u-boot.bin at 0 (the boot ROM's view);
flash1.img holds the env at 0x0, size 0x40000, single copy (CONFIG_ENV_IS_IN_FLASH).
QEMU >= 8 is needed for `saveenv` (Debian 12's 7.2 times out writing pflash).
"""

import atexit
import os
import re
import shutil
import socket
import subprocess
import threading

from agent.core.errors import ConfigError, Transient
from hil import lifeline
from hil.drivers.console import Console
from hil.flash_env import FlashEnv, script_vars

QEMU = "qemu-system-aarch64"
UBOOT_DIR = "/usr/lib/u-boot"
FLASH_SIZE = 64 << 20
ENV_OFFSET = 0x0
ENV_SIZE = 0x40000
MIN_QEMU_MAJOR = 8
PROMPT = "=> "


class QemuStartError(Transient):
    reason = "qemu-start"


def uboot_bin(arch="qemu_arm64"):
    return os.path.join(UBOOT_DIR, arch, "u-boot.bin")


def qemu_version(binary=QEMU):
    """(major, minor) of the QEMU binary, or None when it is missing."""
    path = shutil.which(binary)
    if not path:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def missing_prerequisites(arch="qemu_arm64"):
    """Why the QEMU rig cannot run here (empty when it can); `make qemu-deps` fixes them."""
    reasons = []
    version = qemu_version()
    if version is None:
        reasons.append("%s not installed" % QEMU)
    elif version[0] < MIN_QEMU_MAJOR:
        reasons.append("%s %d.%d cannot saveenv to pflash (need >= 8)" % ((QEMU,) + version))
    if not os.path.exists(uboot_bin(arch)):
        reasons.append("%s missing (package u-boot-qemu)" % uboot_bin(arch))
    for tool in ("fw_printenv", "fw_setenv"):
        if not shutil.which(tool):
            reasons.append("%s missing (package libubootenv-tool)" % tool)
    return reasons


def board_env(arch="qemu_arm64", **overrides):
    """A complete env for the board from hil/qemu_scripts/<arch>_board.env plus overrides."""
    variables = script_vars("%s_board.env" % arch)
    variables.update(overrides)
    return variables


class QemuUBoot:
    def __init__(self, workdir, env=None, env_image=None, arch="qemu_arm64", memory_mb=512,
                 disks=()):  # fmt: skip
        """Create flash0/flash1 in `workdir`. The env comes from `env` (a complete dict,
        written with fw_setenv), `env_image` (a file copied to offset 0 of flash1), or
        neither (blank: U-Boot uses its built-in default env). `disks`: raw image files
        attached as virtio disks (U-Boot's `virtio 0`, `virtio 1`, ...)."""
        self.workdir = os.path.abspath(workdir)
        self.disks = list(disks)
        self.arch = arch
        self.memory_mb = memory_mb
        self.flash0 = os.path.join(self.workdir, "flash0.img")
        self.flash1 = os.path.join(self.workdir, "flash1.img")
        self.console_log = os.path.join(self.workdir, "console.log")
        self.qemu_log = os.path.join(self.workdir, "qemu.log")
        self.console = None
        self.proc = None
        self.guard = None  # lifeline.guard's watcher while QEMU runs
        self.port = None
        self._registered = False
        os.makedirs(self.workdir, exist_ok=True)
        self._make_flash(env, env_image)

    # -- flash --------------------------------------------------------------------------------

    def env(self):
        """The env in flash1 through fw_printenv/fw_setenv (read() / write(vars))."""
        return FlashEnv(self.flash1, ENV_OFFSET, ENV_SIZE, workdir=self.workdir)

    def _make_flash(self, env, env_image):
        binary = uboot_bin(self.arch)
        if not os.path.exists(binary):
            raise ConfigError("%s not found" % binary, hint="make qemu-deps")
        _blank(self.flash0)
        with open(binary, "rb") as src, open(self.flash0, "r+b") as dst:
            shutil.copyfileobj(src, dst)
        _blank(self.flash1)
        if env_image:
            with open(env_image, "rb") as src, open(self.flash1, "r+b") as dst:
                dst.write(src.read(ENV_SIZE))
        elif env is not None:
            # A blank flash has no valid env: fw_setenv starts from `env` as the defaults.
            self.env().write({}, defaults=env)

    # -- power --------------------------------------------------------------------------------

    def start(self, timeout=30):
        """Power on: launch QEMU, connect the console. Raises QemuStartError with its log."""
        if self.proc is not None:
            raise QemuStartError("QEMU already running (pid %d)" % self.proc.pid)
        for image in (self.flash0, self.flash1):
            # QEMU opens drives only after the console connects; say it here, clearly.
            if not os.path.isfile(image):
                raise QemuStartError("flash image %s is missing" % image, hint="recreate the rig")
        if not self._registered:
            atexit.register(self.stop)
            self._registered = True
        for _ in range(3):  # the free port can be taken between our probe and QEMU's bind
            self.port = _free_port()
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            self.guard = lifeline.guard(self.proc.pid)  # a killed test process takes it along
            said = self._wait_listening(timeout)
            if said and said[-1] == "listening":
                break
            self._kill()
            if not any("in use" in line for line in said):
                raise QemuStartError("QEMU did not start", hint="see %s" % self.qemu_log)
        else:
            raise QemuStartError("QEMU found no free port", hint="see %s" % self.qemu_log)
        self.console = Console("socket://127.0.0.1:%d" % self.port, log_path=self.console_log)
        return self.console

    def stop(self):
        """Power off: close the console, kill QEMU by PID. Safe to call any time, twice."""
        # QEMU first: its socket closes, so the console reader ends at once, log complete.
        self._kill()
        if self.console is not None:
            self.console.close()
            self.console = None

    def power_cycle(self, timeout=30):
        self.stop()
        return self.start(timeout)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- U-Boot shell -------------------------------------------------------------------------

    def wait_prompt(self, timeout=20):
        return self.console.expect(re.escape(PROMPT), timeout)

    def run(self, command, timeout=20):
        """Type `command` at the prompt; return what it printed (U-Boot echoes the line)."""
        self.console.discard()
        self.console.send_line(command)
        self.console.expect(re.escape(command) + r"\n", timeout)
        match = self.console.expect(r"(?s)(.*?)" + re.escape(PROMPT), timeout)
        return match.group(1)

    def printenv(self, name, timeout=20):
        """U-Boot's own view of variable `name`; None when it is not defined."""
        out = self.run("printenv %s" % name, timeout)
        match = re.search(r"^%s=(.*)$" % re.escape(name), out, re.M)
        return match.group(1) if match else None

    # -- internals ----------------------------------------------------------------------------

    def _command(self):
        cmd = [QEMU, "-machine", "virt", "-cpu", "cortex-a57", "-m", str(self.memory_mb)]
        cmd += ["-display", "none", "-monitor", "none", "-nic", "none"]
        if qemu_version() >= (7, 1):  # -audio exists from 7.1 on
            cmd += ["-audio", "none"]
        for index, image in ((0, self.flash0), (1, self.flash1)):
            cmd += ["-drive", "if=pflash,format=raw,index=%d,file=%s" % (index, image)]
        for disk in self.disks:
            cmd += ["-drive", "if=virtio,format=raw,file=%s" % disk]
        chardev = "socket,id=con0,host=127.0.0.1,port=%d,server=on,wait=on" % self.port
        return cmd + ["-chardev", chardev, "-serial", "chardev:con0"]

    def _wait_listening(self, timeout):
        """QEMU's stderr lines until it says it waits for the console connection (it prints
        that before blocking; then the list ends with "listening") or exits. The rest of
        stderr goes on into qemu.log."""
        done = threading.Event()
        said = []
        proc = self.proc

        def drain():
            with open(self.qemu_log, "a") as log:
                for line in iter(proc.stderr.readline, b""):
                    text = line.decode("utf-8", "replace")
                    log.write(text)
                    log.flush()
                    if not done.is_set():
                        said.append(text)
                        if "waiting for connection" in text:
                            said.append("listening")
                            done.set()
            done.set()

        threading.Thread(target=drain, name="qemu-stderr", daemon=True).start()
        done.wait(timeout)
        return list(said)

    def _kill(self):
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        guard, self.guard = self.guard, None
        lifeline.unguard(guard)


def _blank(path):
    """A zero-filled image of FLASH_SIZE (sparse). Zeros hold no valid env (bad CRC), so
    U-Boot falls back to its built-in env, as on a board with a blank env sector."""
    with open(path, "wb") as f:
        f.truncate(FLASH_SIZE)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
