"""A/B boot control on real bootloaders: one contract (contract.py), one file per backend.

Backends are picked by name, the name coming from the agent's TOML config
([bootloader] backend = "..."). MODULES says which module holds each; a backend module adds
its class to BACKENDS when imported, and only the configured one is imported (a charger runs
one bootloader; the others' imports would only cost start-up time).
"""

import importlib

from bootloader_iface.contract import BootControl

BACKENDS = {}
MODULES = {
    "command": "bootloader_iface.command",
    "grub": "bootloader_iface.grub",
    "simulated": "bootloader_iface.simulated",
    "uboot-bootcount": "bootloader_iface.uboot_bootcount",
    "uboot-rauc": "bootloader_iface.uboot_rauc",
}


def open_backend(name, slots, options):
    """Build the backend called `name` for `slots` with its config `options`."""
    from agent.core.errors import ConfigError

    if isinstance(name, str) and name not in BACKENDS and name in MODULES:
        importlib.import_module(MODULES[name])
    try:
        cls = BACKENDS[name]
    except (KeyError, TypeError):  # TypeError: a name TOML gave as a list or table
        raise ConfigError(
            "unknown bootloader backend %r" % (name,),
            hint="set [bootloader] backend to one of: %s" % ", ".join(sorted(MODULES)),
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


__all__ = ["BACKENDS", "MODULES", "BootControl", "open_backend", "open_from_config"]
