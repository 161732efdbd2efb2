"""The running system is never written: the last check before a slot is touched.

Invariant: `check_writable` returns only if no target of the slot about to be written is, or
resolves to, a target of another slot (same path after symlinks, same file by inode, same
device by st_rdev, block or character) or the device the root filesystem is mounted from,
and the kernel command line does not name that slot as the booted one, whatever the config
and the boot environment say. A config that aliases two slots is wrong and stays wrong:
ConfigError; a kernel that disagrees with the boot environment is a BootEnvError.
"""

import os
import stat

from agent.core.errors import BootEnvError, ConfigError
from bootloader_iface.booted import CMDLINE, slot_from_cmdline


def identities(path):
    """What a slot target really is: its resolved path and, when it exists, its inode or
    device number. Two targets sharing any identity are the same storage."""
    ids = {("path", os.path.realpath(path))}
    try:
        st = os.stat(path)  # follows symlinks, as a write would
    except OSError:
        return ids
    if stat.S_ISBLK(st.st_mode):
        ids.add(("block", st.st_rdev))
    elif stat.S_ISCHR(st.st_mode):
        ids.add(("char", st.st_rdev))  # MTD flash slots are character devices
    else:
        ids.add(("inode", st.st_dev, st.st_ino))
    return ids


def root_device():
    """The device number the root filesystem is mounted from, or None."""
    try:
        return os.stat("/").st_dev
    except OSError:
        return None


def check_writable(cfg, slot, cmdline=None):
    """Refuse to write `slot` if that could write the running system (see module doc).

    cmdline: path of the kernel command line (default [bootloader] cmdline, /proc/cmdline)."""
    _check_kernel(cfg, slot, cmdline)
    others = {}
    for name in cfg.slot_names:
        if name != slot:
            for cls, path in cfg.slots[name].items():
                for ident in identities(path):
                    others[ident] = (name, cls, path)
    rootdev = root_device()
    for cls, path in sorted(cfg.slots[slot].items()):
        ids = identities(path)
        for ident in sorted(ids):
            if ident in others:
                name, other_cls, other = others[ident]
                raise ConfigError(
                    "slot %s %s (%s) is the same storage as slot %s %s (%s): writing it would "
                    "overwrite the other slot" % (slot, cls, path, name, other_cls, other),
                    hint="give every slot its own device or file in [slots]",
                )
        if rootdev is not None and ("block", rootdev) in ids:
            raise ConfigError(
                "slot %s %s (%s) is the device the running root filesystem is mounted from"
                % (slot, cls, path),
                hint="the [slots] entries or the boot order are wrong; check both",
            )


def _check_kernel(cfg, slot, cmdline):
    path = cmdline or cfg.bootloader.get("cmdline") or CMDLINE
    if path != CMDLINE:
        path = cfg.resolve(path)
    try:
        with open(path) as f:
            text = f.read(64 * 1024)
    except OSError:
        return  # no kernel command line here (not Linux, or a test board without one)
    booted = slot_from_cmdline(text, cfg.slot_names)
    if booted == slot:
        raise BootEnvError(
            "the kernel command line (%s) says slot %s is running; refusing to write it"
            % (path, slot),
            hint="the boot environment and the kernel disagree about the booted slot; "
            "check the boot script and `charger-update boot status`",
        )
