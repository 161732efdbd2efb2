"""The agent's TOML config: one file describes the board (device, slots, bootloader, trust).

Invariant: a Config that loaded is complete and consistent for the sections every command
needs; anything wrong raises ConfigError naming the file, the key and what to write instead.
Relative paths are taken relative to the config file, so a board directory can be moved whole.
Sections other issues own ([mqtt], [ocpp], [trial], ...) are kept as plain dicts in `raw`.
"""

import os
import sys

from agent.core.errors import ConfigError
from agent.state import statedir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

DEFAULT_PATH = "/etc/charger-update/agent.toml"
ENV_VAR = "CHARGER_UPDATE_CONFIG"

DOWNLOAD_DEFAULTS = {
    "timeout_s": 30.0,  # per socket operation
    "retries": 8,  # reconnects after a dropped connection, per download
    "backoff_s": 1.0,  # first back-off; doubles each retry, with full jitter
    "backoff_max_s": 60.0,
    "max_rate": 0,  # bytes per second; 0 means unlimited
    "ca_file": "",  # extra CA bundle for https; system store otherwise
    # 512 KiB: two queued per pipeline stage keep hashing and the writes overlapped at the
    # medium's speed, and an install stays under 40 MiB peak RSS (docs/transfer.md).
    "chunk_size": 1 << 19,
    "max_time_s": 6 * 3600.0,  # a whole transfer (one source opened); 0 means unbounded
    "file_dir": "",  # file: job URLs may name regular files under it; "" turns them off
    "delta": True,  # format-2 bundles: fetch only the blocks neither slot has (ranges)
}
# [download] keys that are numbers: (smallest allowed, largest allowed).
DOWNLOAD_NUMBERS = {
    "timeout_s": (0.001, 86400),
    "retries": (0, 1000),
    "backoff_s": (0, 86400),
    "backoff_max_s": (0, 86400),
    "max_rate": (0, 1 << 40),
    "chunk_size": (4096, 1 << 30),
    "max_time_s": (0, 30 * 86400),
}


def default_path():
    return os.environ.get(ENV_VAR) or DEFAULT_PATH


class Config:
    def __init__(self, raw, path):
        self.raw = raw
        self.path = path
        self.base_dir = os.path.dirname(os.path.abspath(path))
        self.device = self._table("device", required=("id", "model", "hardware_revision"))
        self.slots = self._slots()
        self.bootloader = self._table("bootloader", required=("backend",))
        self.trust = self._table("trust", required=())
        state = self._table("state", required=()).get("dir", statedir.DEFAULT_DIR)
        self.state_dir = self.resolve(state)
        statedir.check_not_on_slot(self.state_dir, self.slots, self.path)
        self.download = self._download()
        self.readback = self._readback()

    # -- helpers ------------------------------------------------------------------------------

    def resolve(self, path):
        """A path from the config, made absolute relative to the config file."""
        path = os.path.expanduser(str(path))
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    def section(self, name):
        """A section owned by a later component; an empty dict when absent."""
        value = self.raw.get(name, {})
        if not isinstance(value, dict):
            raise self._error("[%s] must be a table" % name)
        return value

    def options(self, name, defaults):
        """Section `name` over `defaults`; a key the defaults do not know is a ConfigError
        (catches typos), and so is a value of another type than its default's."""
        table = self.section(name)
        unknown = sorted(set(table) - set(defaults))
        if unknown:
            raise self._error("unknown key(s) in [%s]: %s" % (name, ", ".join(unknown)),
                              hint="known keys: %s" % ", ".join(sorted(defaults)))  # fmt: skip
        merged = dict(defaults)
        for key, value in table.items():
            default = defaults[key]
            if default is not None and not _same_kind(value, default):
                raise self._error("[%s] %s must be %s, not %r"
                                  % (name, key, type(default).__name__, value))  # fmt: skip
            merged[key] = value
        return merged

    @property
    def slot_names(self):
        return tuple(sorted(self.slots))

    def slot_target(self, slot, slot_class):
        """The device or file that holds `slot_class` (e.g. "rootfs") of `slot`."""
        try:
            return self.slots[slot][slot_class]
        except KeyError:
            raise ConfigError(
                "slot %s has no target for slot class %r in %s" % (slot, slot_class, self.path),
                hint='add %s = "/dev/..." under [slots.%s]' % (slot_class, slot),
            ) from None

    def reads_back(self, slot_class):
        """Whether an install reads `slot_class` back after writing it ([readback], default
        true). MCU images kept in the state dir are always read back."""
        return self.readback.get(slot_class, True)

    # -- validation ---------------------------------------------------------------------------

    def _readback(self):
        """[readback] SLOT_CLASS = false: a medium whose read-back costs more than it is
        worth (docs/transfer.md) is written without it; the install says so, never silently."""
        table = self._table("readback", required=())
        classes = set(c for targets in self.slots.values() for c in targets)
        for slot_class, value in table.items():
            if slot_class not in classes:
                raise self._error(
                    "[readback] names slot class %r, which no slot has" % slot_class,
                    hint="use one of: %s" % ", ".join(sorted(classes)),
                )
            if not isinstance(value, bool):
                raise self._error(
                    "[readback] %s must be true or false, not %r" % (slot_class, value)
                )
        return table

    def _error(self, message, hint=None):
        return ConfigError("%s: %s" % (self.path, message), hint=hint)

    def _table(self, name, required):
        table = self.section(name)
        missing = [key for key in required if key not in table]
        if missing:
            raise self._error(
                "[%s] is missing %s" % (name, ", ".join(missing)),
                hint="see docs/config.md for an example",
            )
        return dict(table)

    def _download(self):
        download = dict(DOWNLOAD_DEFAULTS)
        download.update(self._table("download", required=()))
        for key, (low, high) in DOWNLOAD_NUMBERS.items():
            value = download[key]
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not low <= value <= high:  # NaN fails the range too
                raise self._error(
                    "[download] %s must be a number from %s to %s, not %r"
                    % (key, low, high, value),
                    hint="e.g. %s = %r" % (key, DOWNLOAD_DEFAULTS[key]),
                )
        if not isinstance(download["chunk_size"], int):
            raise self._error("[download] chunk_size must be a whole number of bytes")
        for key in ("ca_file", "file_dir"):
            if not isinstance(download[key], str):
                raise self._error("[download] %s must be a path string" % key)
        if not isinstance(download["delta"], bool):
            raise self._error("[download] delta must be true or false")
        if download["file_dir"]:
            download["file_dir"] = self.resolve(download["file_dir"])
        return download

    def _slots(self):
        slots = self.section("slots")
        if len(slots) < 2:
            raise self._error(
                "[slots] must name at least two slots (A/B), found %d" % len(slots),
                hint='add [slots.A] rootfs = "/dev/..." and [slots.B] rootfs = "/dev/..."',
            )
        resolved = {}
        for slot, targets in slots.items():
            if not isinstance(targets, dict) or not targets:
                raise self._error("[slots.%s] must map slot classes to devices" % slot)
            resolved[slot] = dict((cls, self.resolve(dev)) for cls, dev in targets.items())
        seen = {}
        for slot in sorted(resolved):
            for cls, target in sorted(resolved[slot].items()):
                path = os.path.normpath(target)
                if path in seen:
                    raise self._error(
                        "[slots.%s] %s and [slots.%s] %s are the same target %s"
                        % (seen[path] + (slot, cls, path)),
                        hint="every slot needs its own device or file, or an install would "
                        "overwrite the running one",
                    )
                seen[path] = (slot, cls)
        return resolved


def _same_kind(value, default):
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def load(path=None):
    path = path or default_path()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            "config file %s does not exist" % path,
            hint="pass --config PATH or set %s" % ENV_VAR,
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("%s is not valid TOML: %s" % (path, e)) from None
    except OSError as e:
        raise ConfigError("cannot read config %s: %s" % (path, e.strerror)) from None
    return Config(raw, path)
