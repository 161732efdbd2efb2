"""Power-safe writes: the target is never left half-written, and no temp file lingers."""

import os

import pytest

from agent.state import atomic


def test_replace_keeps_no_temp_files(tmp_path):
    path = str(tmp_path / "journal.json")
    atomic.write_json_atomic(path, {"state": "idle"})
    atomic.write_json_atomic(path, {"state": "downloading"})
    assert atomic.read_json(path) == {"state": "downloading"}
    assert os.listdir(tmp_path) == ["journal.json"]


def test_failed_rename_leaves_old_version_and_no_temp(tmp_path, mocker):
    path = str(tmp_path / "status.json")
    atomic.write_json_atomic(path, {"v": 1})
    # os.replace failing stands in for a crash between write and rename.
    mocker.patch("agent.state.atomic.os.replace", side_effect=OSError(28, "No space left"))
    with pytest.raises(OSError):
        atomic.write_json_atomic(path, {"v": 2})
    assert atomic.read_json(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["status.json"]


def test_missing_file_reads_as_default(tmp_path):
    assert atomic.read_json(str(tmp_path / "absent.json"), default={}) == {}
