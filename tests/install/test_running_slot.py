"""The running slot is untouchable (issue 11, adversarial review #10): two slots naming the
same storage by any alias, the root filesystem's own device, or a kernel command line that
says the slot about to be written is the one running. Each must be refused before a byte is
written, and the booted image must stay intact."""

import os
import shutil
import tempfile

import pytest

from agent import config as config_mod
from agent.cli import main
from agent.core.errors import ConfigError
from tests.bundle.factory import make_bundle

PAYLOAD = os.urandom(256 * 1024)
FACTORY = b"factory firmware 1.0"


@pytest.fixture
def setup(tmp_path, board):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.1.0")
    return bundle, board(root)


def rewrite(b, old, new):
    with open(b.config_path) as f:
        text = f.read()
    assert old in text
    with open(b.config_path, "w") as f:
        f.write(text.replace(old, new))


def install(b, bundle, capsys):
    code = main(["--config", b.config_path, "install", str(bundle), "--no-switch"])
    return code, capsys.readouterr().err


def test_same_target_for_both_slots_refused(setup, capsys):
    bundle, b = setup
    rewrite(b, 'rootfs = "slotB.img"', 'rootfs = "slotA.img"')
    code, err = install(b, bundle, capsys)
    assert code == ConfigError.exit_code and "same target" in err
    assert b.read_slot("A") == FACTORY


def test_symlink_from_one_slot_to_the_running_one_refused(setup, capsys):
    bundle, b = setup
    os.symlink("slotA.img", os.path.join(b.dir, "slotB-link.img"))
    rewrite(b, 'rootfs = "slotB.img"', 'rootfs = "slotB-link.img"')
    code, err = install(b, bundle, capsys)
    assert code == ConfigError.exit_code and "same storage as slot A" in err
    assert b.read_slot("A") == FACTORY


def test_symlinked_directory_alias_of_the_running_slot_refused(setup, capsys):
    bundle, b = setup
    os.symlink(".", os.path.join(b.dir, "here"))
    rewrite(b, 'rootfs = "slotB.img"', 'rootfs = "here/slotA.img"')
    code, err = install(b, bundle, capsys)
    assert code == ConfigError.exit_code and "same storage" in err
    assert b.read_slot("A") == FACTORY


def test_hard_link_to_the_running_slot_refused(setup, capsys):
    bundle, b = setup
    os.link(b.slot_a, os.path.join(b.dir, "slotB-hard.img"))
    rewrite(b, 'rootfs = "slotB.img"', 'rootfs = "slotB-hard.img"')
    code, err = install(b, bundle, capsys)
    assert code == ConfigError.exit_code and "same storage as slot A" in err
    assert b.read_slot("A") == FACTORY


def _node(directory, name, rdev):
    path = os.path.join(directory, name)
    os.mknod(path, 0o600 | 0o060000, rdev)  # S_IFBLK; needs root, which tests run as here
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_two_device_nodes_of_one_block_device_refused(setup, capsys):
    """/dev/mmcblk0p2 and a udev alias of it (/dev/disk/by-label/rootfs) are one device:
    compared by st_rdev. The numbers name no real device here; nothing is opened."""
    bundle, b = setup
    rdev = os.makedev(7, 251)
    a, alias = _node(b.dir, "a-node", rdev), _node(b.dir, "b-node", rdev)
    rewrite(b, 'rootfs = "slotA.img"', 'rootfs = "%s"' % a)
    rewrite(b, 'rootfs = "slotB.img"', 'rootfs = "%s"' % alias)
    code, err = install(b, bundle, capsys)
    assert code == ConfigError.exit_code and "same storage as slot A" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_root_filesystem_device_as_the_inactive_slot_refused(setup, capsys):
    bundle, b = setup
    root_dev = os.stat("/").st_dev
    node = _node(b.dir, "root-node", root_dev)
    rewrite(b, 'rootfs = "slotB.img"', 'rootfs = "%s"' % node)
    # The state dir must lie elsewhere, or the config's own check (a state dir on a slot)
    # refuses first and the installer's guard is never reached.
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == root_dev:
        pytest.skip("no second filesystem for the state dir")
    state = tempfile.mkdtemp(dir="/dev/shm")
    try:
        rewrite(b, 'dir = "state"', 'dir = "%s"' % state)
        code, err = install(b, bundle, capsys)
    finally:
        shutil.rmtree(state)
    assert code == ConfigError.exit_code and "root filesystem" in err


def test_write_to_the_slot_the_kernel_says_is_booted_refused(setup, capsys):
    """The boot env says A is booted (so B would be written); the kernel says B runs."""
    bundle, b = setup
    with open(os.path.join(b.dir, "cmdline"), "w") as f:
        f.write("console=ttyS0 root=/dev/mmcblk0p3 charger.slot=B\n")
    rewrite(b, 'booted = "A"', 'booted = "A"\ncmdline = "cmdline"')
    code, err = install(b, bundle, capsys)
    assert code == 21 and "says slot B is running" in err
    assert b.read_slot("B") == b"old firmware 0.9"
    assert b.boot().attempts_left("B") == 0


def test_same_target_in_the_config_is_refused_at_load(setup):
    _, b = setup
    rewrite(b, 'rootfs = "slotB.img"', 'rootfs = "./slotA.img"')
    with pytest.raises(ConfigError, match="same target"):
        config_mod.load(b.config_path)
