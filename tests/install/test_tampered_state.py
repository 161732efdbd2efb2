"""`charger-update install` on a board whose state was tampered with, or that a second writer
is using (issue 11 #5, #6, #23, #26, #27). Every test names the attack or the mistake."""

import json
import os
import stat
import subprocess
import sys

import pytest

from agent import config as config_mod
from agent.cli import main
from agent.core.errors import ConfigError, Downgrade, StateBusy
from agent.state import statedir
from tests.bundle.factory import make_bundle

PAYLOAD = os.urandom(64 * 1024)


def cli(board, *argv):
    return main(["--config", board.config_path, *argv])


def floor_env(board):
    with open(os.path.join(board.dir, "boot-env.json")) as f:
        return json.load(f).get("CHARGER_SECURITY_FLOOR")


@pytest.fixture
def committed_sv5(tmp_path, board):
    """A board that installed security version 5 into B and committed it by hand (`boot
    mark-good B`), plus bundles with security versions 4 and 5 signed by the same root."""
    sv5, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.5.0", security_version=5,
                            name="sv5.cub")  # fmt: skip
    sv4, _ = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.4.0", security_version=4,
                         root_path=root, name="sv4.cub")  # fmt: skip
    b = board(root)
    assert cli(b, "install", sv5, "--no-switch") == 0
    assert cli(b, "boot", "mark-good", "B") == 0
    return b, sv4, sv5


def test_manual_mark_good_raises_the_anti_rollback_floor(tmp_path, board, capsys):
    """#6: `boot mark-good` is a commit: afterwards security version 4 is a downgrade."""
    sv5, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.5.0", security_version=5,
                            name="sv5.cub")  # fmt: skip
    sv4, _ = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.4.0", security_version=4,
                         root_path=root, name="sv4.cub")  # fmt: skip
    b = board(root)
    assert cli(b, "install", sv5, "--no-switch") == 0
    assert cli(b, "install", sv4, "--no-switch") == 0  # B only installed: no floor yet
    assert cli(b, "install", sv5, "--no-switch") == 0
    capsys.readouterr()
    assert cli(b, "boot", "mark-good", "B") == 0
    assert "anti-rollback floor 5" in capsys.readouterr().out
    assert floor_env(b) == "5"
    assert cli(b, "install", sv4, "--no-switch") == Downgrade.exit_code


def test_floor_survives_deleted_slots_json(committed_sv5):
    """#5: deleting the slot records (and the floors file beside them) lowers nothing: the
    boot environment keeps the floor."""
    b, sv4, sv5 = committed_sv5
    state = os.path.join(b.dir, "state")
    for name in ("slots.json", "floors.json"):
        os.unlink(os.path.join(state, name))
    assert cli(b, "install", sv4, "--no-switch") == Downgrade.exit_code
    assert cli(b, "install", sv5, "--no-switch") == 0
    with open(os.path.join(state, "floors.json")) as f:
        assert json.load(f)["security_version"] == 5  # and the state dir got it back


@pytest.mark.parametrize(
    "content",
    ["{}", "null", "[]", "0", '""', '"str"', '{"security_version": true, "slots": {}}',
     '{"security_version": "x", "slots": {}}', '{"security_version": 0, "slots": []}',
     '{"security_version": 0, "slots": {"A": "good"}}', "{not json", "[" * 100000],
    ids=["empty-object", "null", "list", "zero", "empty-string", "string", "bool-floor",
         "string-floor", "slots-list", "slot-string", "not-json", "nested-past-recursion"],
)  # fmt: skip
def test_floor_survives_blanked_slots_json(committed_sv5, capsys, content):
    """#5 and #23: a record that is not a well-formed object is refused in one line (exit
    20), never read as "no floor", and the hint never says to delete the file."""
    b, sv4, _ = committed_sv5
    with open(os.path.join(b.dir, "state", "slots.json"), "w") as f:
        f.write(content)
    capsys.readouterr()
    assert cli(b, "install", sv4, "--no-switch") == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("charger-update: error: slot records") and "Traceback" not in err
    assert "remove" not in err and "delete" not in err


def test_floor_survives_a_blanked_floors_file_and_boot_env_reset(committed_sv5):
    """Either store alone keeps the floor: the env reset to U-Boot's defaults (no floor
    variables) with slots.json intact, and the next write puts the env's copy back."""
    b, sv4, sv5 = committed_sv5
    env_path = os.path.join(b.dir, "boot-env.json")
    with open(env_path) as f:
        env = json.load(f)
    for var in ("CHARGER_SECURITY_FLOOR", "CHARGER_ROOT_FLOOR", "CHARGER_TIME_FLOOR"):
        env.pop(var)
    with open(env_path, "w") as f:
        json.dump(env, f)
    os.unlink(os.path.join(b.dir, "state", "floors.json"))
    assert cli(b, "install", sv4, "--no-switch") == Downgrade.exit_code
    assert cli(b, "install", sv5, "--no-switch") == 0
    assert floor_env(b) == "5"


# --- #27 one writer at a time -----------------------------------------------------------------

HOLD = """
import sys
from agent.state.statedir import StateLock
with StateLock(sys.argv[1], "installing into slot B"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_second_installer_is_refused_while_another_holds_the_state_lock(tmp_path, board, capsys):
    """`charger-update install` while the daemon installs (another process holds the lock):
    refused at once, as a temporary failure naming the holder; nothing written."""
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.1.0")
    b = board(root)
    state = os.path.join(b.dir, "state")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, state], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert cli(b, "install", bundle) == StateBusy.exit_code
        err = capsys.readouterr().err
        assert "is locked by pid %d" % holder.pid in err and "installing into slot B" in err
        assert b.read_slot("B") == b"old firmware 0.9"
        assert cli(b, "boot", "mark-good", "A") == StateBusy.exit_code
    finally:
        holder.communicate("\n", timeout=30)
    assert cli(b, "install", bundle) == 0  # released with the holder


# --- #26 and #23: where the state dir is -----------------------------------------------------


def test_state_dir_defaults_to_the_persistent_data_path(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(
        '[device]\nid = "x"\nmodel = "m"\nhardware_revision = "r"\n'
        '[slots.A]\nrootfs = "a"\n[slots.B]\nrootfs = "b"\n[bootloader]\nbackend = "simulated"\n'
    )
    assert config_mod.load(str(path)).state_dir == "/var/lib/charger-update"


def test_state_dir_on_a_slot_is_refused(tmp_path, board):
    """#26: the state dir on the filesystem of slot B's block device: each slot would keep
    its own floor and journal. The block device is a node with the rdev of the filesystem
    the state dir lives on (mknod, as root): stat is all the check looks at."""
    b = board(str(tmp_path / "root.json"))
    node = os.path.join(b.dir, "slotB.dev")
    try:
        os.mknod(node, stat.S_IFBLK | 0o600, os.stat(b.dir).st_dev)
    except PermissionError:
        pytest.skip("creating a block device node needs CAP_MKNOD")
    text = open(b.config_path).read().replace('rootfs = "slotB.img"', 'rootfs = "slotB.dev"')
    with open(b.config_path, "w") as f:
        f.write(text)
    with pytest.raises(ConfigError, match="lies on slot B"):
        config_mod.load(b.config_path)


def test_state_dir_that_cannot_be_created_is_one_error_line(tmp_path, board, capsys):
    """#23: a state dir under a regular file cannot be created: one line, exit 20."""
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.1.0")
    b = board(root)
    (tmp_path / "board" / "plain-file").write_text("")
    text = open(b.config_path).read().replace('dir = "state"', 'dir = "plain-file/state"')
    with open(b.config_path, "w") as f:
        f.write(text)
    for argv in (("install", bundle), ("boot", "mark-good")):
        capsys.readouterr()
        assert cli(b, *argv) == ConfigError.exit_code
        err = capsys.readouterr().err
        assert err.startswith("charger-update: error: cannot create the state dir")
    assert statedir.DEFAULT_DIR in err
