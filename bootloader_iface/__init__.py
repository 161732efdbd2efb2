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


__all__ = ["BACKENDS", "BootControl", "open_backend"]
