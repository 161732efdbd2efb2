"""The config loader: a broken config names the file, the key and the fix."""

import pytest

from agent import config
from agent.core.errors import ConfigError

GOOD = """
[device]
id = "cp-0001"
model = "ACME-AC22"
hardware_revision = "B"

[slots.A]
rootfs = "slots/a.img"
[slots.B]
rootfs = "/dev/mmcblk0p3"

[bootloader]
backend = "simulated"
"""


def write(tmp_path, text):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def test_good_config_resolves_relative_paths_against_its_own_directory(tmp_path):
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.slot_names == ("A", "B")
    assert cfg.slot_target("A", "rootfs") == str(tmp_path / "slots/a.img")
    assert cfg.slot_target("B", "rootfs") == "/dev/mmcblk0p3"
    assert cfg.state_dir == "/var/lib/charger-update"  # the persistent data path, not a slot
    assert cfg.download["retries"] == config.DOWNLOAD_DEFAULTS["retries"]


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path / "nope.toml"))
    assert "does not exist" in e.value.message
    assert "--config" in e.value.hint


def test_invalid_toml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[device\n"))


def test_missing_device_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing hardware_revision"):
        config.load(write(tmp_path, GOOD.replace('hardware_revision = "B"', "")))


def test_single_slot_is_refused(tmp_path):
    text = GOOD.replace('[slots.B]\nrootfs = "/dev/mmcblk0p3"\n', "")
    with pytest.raises(ConfigError, match="at least two slots"):
        config.load(write(tmp_path, text))


def test_unknown_slot_class_names_the_fix(tmp_path):
    cfg = config.load(write(tmp_path, GOOD))
    with pytest.raises(ConfigError) as e:
        cfg.slot_target("A", "coprocessor")
    assert "[slots.A]" in e.value.hint
