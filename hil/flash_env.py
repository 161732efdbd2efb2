"""The QEMU board's U-Boot environment, read and written with the real libubootenv tools.

Invariant: every byte of the environment in the flash image is written by `fw_setenv` and
read by `fw_printenv` (Debian's libubootenv-tool) through a generated fw_env.config; this
module has no env codec of its own, so what the tests show is interop between U-Boot and the
tools a charger's Linux side uses. (bootloader_iface will take the tools' place later.)

Variable files (`*.env`, `*.hush` under hil/qemu_scripts/) use the tools' script format:
`name=value` per line, `#` comments, one line per variable (U-Boot's `env import -t`).
"""

import os
import shutil
import subprocess

from agent.core.errors import BootEnvError, ConfigError

SCRIPTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "qemu_scripts")
# libubootenv reads script lines into a fixed buffer; longer lines would be cut silently.
MAX_LINE = 1000


def load_vars(path):
    """{name: value} from a script-format file; names must be unique."""
    variables = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep or not name or name in variables:
                raise ConfigError("%s:%d: expected a new name=value, got %r" % (path, number, line))
            variables[name] = value
    return variables


def script_vars(name):
    """Variables from hil/qemu_scripts/NAME."""
    return load_vars(os.path.join(SCRIPTS_DIR, name))


def format_vars(variables):
    """Script-format text (sorted, like fw_printenv); refuses what the tools cannot carry."""
    lines = []
    for name in sorted(variables):
        value = str(variables[name])
        if "=" in name or not name or "\n" in name + value:
            raise ConfigError("U-Boot variable %r=%r cannot be written as one line" % (name, value))
        line = "%s=%s" % (name, value)
        if len(line) > MAX_LINE:
            raise ConfigError("U-Boot variable %s is %d chars; split it" % (name, len(line)))
        lines.append(line)
    return "".join(line + "\n" for line in lines)


class FlashEnv:
    """The env at `offset`/`size` of a flash image file, through fw_printenv/fw_setenv."""

    def __init__(self, image, offset=0x0, size=0x40000, workdir=None):
        self.image = os.path.abspath(image)
        self.workdir = workdir or os.path.dirname(self.image)
        self.config = os.path.join(self.workdir, "fw_env.config")
        # Hex with 0x always: libubootenv reads these columns as hex even without it.
        with open(self.config, "w") as f:
            f.write("%s 0x%x 0x%x\n" % (self.image, offset, size))
        for tool in ("fw_printenv", "fw_setenv"):
            if not shutil.which(tool):
                raise ConfigError("%s not found" % tool, hint="apt-get install libubootenv-tool")

    def write(self, variables, defaults=None):
        """Set `variables` (a value None deletes). With `defaults`, an env that is not valid
        yet (blank flash) starts from exactly those variables: U-Boot does not merge its
        built-in defaults into an env it loads, so they must be complete for the board."""
        script = self._file("fw_setenv.script", format_vars(_drop_none(variables)))
        deleted = [name for name, value in variables.items() if value is None]
        if deleted:  # an empty value in a script line deletes the variable
            with open(script, "a") as f:
                f.write("".join("%s=\n" % name for name in sorted(deleted)))
        cmd = ["fw_setenv", "-c", self.config, "-s", script]
        if defaults is not None:
            cmd += ["-f", self._file("fw_env.defaults", format_vars(defaults))]
        self._run(cmd)

    def read(self):
        """{name: value} as fw_printenv prints it; BootEnvError when the env is not valid."""
        out = self._run(["fw_printenv", "-c", self.config])
        variables = {}
        for line in out.splitlines():
            name, sep, value = line.partition("=")
            if sep:
                variables[name] = value
        return variables

    def _file(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def _run(self, cmd):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        # A bad CRC makes fw_printenv exit non-zero ("Cannot read environment"): that is a
        # corrupt env, never an empty one.
        if proc.returncode != 0:
            raise BootEnvError(
                "%s failed on %s (exit %d): %s"
                % (cmd[0], self.image, proc.returncode, proc.stderr.strip() or proc.stdout.strip())
            )
        return proc.stdout


def _drop_none(variables):
    return dict((k, v) for k, v in variables.items() if v is not None)
