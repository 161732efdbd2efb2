"""A/B boot control on real bootloaders: one contract (contract.py), one file per backend.

Backends are picked by name from BACKENDS, the name coming from the agent's TOML config
([bootloader] backend = "..."). Each backend module adds itself to this dict.
"""

from bootloader_iface.contract import BootControl

BACKENDS = {}


def open_backend(name, slots, options):
    """Build the backend called `name` for `slots` with its config `options`."""
    from agent.core.errors import ConfigError

    try:
        cls = BACKENDS[name]
    except KeyError:
        raise ConfigError(
            "unknown bootloader backend %r" % name,
            hint="set [bootloader] backend to one of: %s" % ", ".join(sorted(BACKENDS)),
        ) from None
    return cls(slots, options)


# Options that name files: relative paths are taken relative to the agent config file.
PATH_OPTIONS = ("fw_env_config", "grubenv", "state", "booted_file", "cmdline")


def open_from_config(cfg):
    """The backend the agent config `cfg` (agent.config.Config) names, paths resolved."""
    options = dict(cfg.bootloader)
    for key in PATH_OPTIONS:
        if options.get(key):
            options[key] = cfg.resolve(options[key])
    return open_backend(options.get("backend"), cfg.slot_names, options)


# Each backend module registers itself in BACKENDS on import.
from bootloader_iface import command, grub, simulated, uboot_bootcount, uboot_rauc  # noqa: E402,F401

__all__ = ["BACKENDS", "BootControl", "open_backend", "open_from_config"]
