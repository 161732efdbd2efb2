"""The virtual board's directory: flash, boot environment, persistent data, volatile run dir.

    BOARD/agent.toml      the agent's config (what /etc/charger-update/agent.toml is on a board)
    BOARD/board.toml      the board itself: watchdog timeout
    BOARD/uplink.toml     where the board's uplink forwards its local ports (the backend)
    BOARD/stack.toml      optional: the charging stack owns the OCPP connection (protocol,
                          CSMS url) and drives the agent through its local API socket
    BOARD/fw_env.config   U-Boot env location, redundant pair in flash/uboot.env
    BOARD/flash/          slotA.img, slotB.img, uboot.env: survive power cuts
    BOARD/data/           the agent's persistent state dir (journal, slot records)
    BOARD/run/            volatile: wiped at power-on (extracted rootfs, sockets, cmdline)

Invariant: everything a power cut must not lose is under flash/ or data/; run/ is rebuilt.
"""

import os
import shutil

import tomli_w

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from agent.core.errors import BootEnvError
from bootloader_iface import uboot_rauc
from bootloader_iface.uboot_env import UBootEnv

SLOTS = ("A", "B")
ENV_SIZE = 0x4000
# U-Boot needs these in an env written from scratch (it does not merge its defaults).
BASE_ENV = {"bootdelay": "0", "stdin": "serial", "stdout": "serial", "stderr": "serial"}


def slot_image(board, slot):
    return os.path.join(board, "flash", "slot%s.img" % slot)


def boot_env(board):
    return UBootEnv(os.path.join(board, "fw_env.config"))


def read_board(board):
    with open(os.path.join(board, "board.toml"), "rb") as f:
        return tomllib.load(f)


def watchdog_s(board):
    return float(read_board(board).get("watchdog_s", 10))


def bootloader_select(board, reset=None):
    """Power-on: the RAUC-style selection with attempt counting, saved before booting; a
    watchdog or panic `reset` of the slot on trial ends its attempts (boot.cmd.rauc)."""
    try:
        return uboot_rauc.power_on(boot_env(board), SLOTS, reset=reset)
    except BootEnvError:
        return None


def create(board, agent_sections, routes, factory_image, watchdog=10.0, stack=None):
    """A factory-fresh board: slot A holds `factory_image` and is good, slot B is empty."""
    if os.path.exists(board):
        shutil.rmtree(board)
    for sub in ("flash", "data", "run"):
        os.makedirs(os.path.join(board, sub))
    shutil.copyfile(factory_image, slot_image(board, "A"))
    open(slot_image(board, "B"), "wb").close()
    with open(os.path.join(board, "fw_env.config"), "w") as f:
        env_file = os.path.join(board, "flash", "uboot.env")
        f.write("%s 0x0 0x%x\n%s 0x%x 0x%x\n" % (env_file, ENV_SIZE, env_file, ENV_SIZE, ENV_SIZE))
    with open(env_file, "wb") as f:
        f.write(b"\xff" * (2 * ENV_SIZE))
    env = dict(BASE_ENV, BOOT_ORDER="A B", BOOT_A_LEFT="3", BOOT_B_LEFT="0")
    boot_env(board).format(env)
    sections = {
        "slots": {"A": {"rootfs": "flash/slotA.img"}, "B": {"rootfs": "flash/slotB.img"}},
        "bootloader": {
            "backend": "uboot-rauc",
            "fw_env_config": "fw_env.config",
            "cmdline": "run/cmdline",
        },
        "state": {"dir": "data"},
    }
    sections.update(agent_sections)
    files = [
        ("agent.toml", sections),
        ("board.toml", {"watchdog_s": watchdog}),
        ("uplink.toml", {"route": routes}),
    ]
    if stack:
        files.append(("stack.toml", stack))
    for name, data in files:
        with open(os.path.join(board, name), "w") as f:
            f.write(tomli_w.dumps(data))
