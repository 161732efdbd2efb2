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


def test_symlink_planted_at_temp_name_is_never_followed(tmp_path, monkeypatch):
    """Issue 11 #20: someone who can write the state dir plants a symlink where the temp file
    will be created; the write must neither follow it nor turn the target into a link."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = str(tmp_path / "slots.json")
    # Every temp name the writer could pick next is taken by a planted symlink to the victim.
    names = iter(["planted-1", "planted-2", "free"])
    for name in ("planted-1", "planted-2"):
        os.symlink(str(victim), str(tmp_path / ("slots.json." + name)))
    monkeypatch.setattr(atomic, "_temp_suffix", lambda: next(names), raising=False)
    # Today's predictable name (pid, thread): plant there too, so the old code is caught.
    import threading

    legacy = "%s.tmp-%d-%d" % (path, os.getpid(), threading.get_ident())
    os.symlink(str(victim), legacy)
    atomic.write_json_atomic(path, {"security_version": 5})
    assert victim.read_text() == "precious"
    assert not os.path.islink(path)
    assert atomic.read_json(path) == {"security_version": 5}
    assert not os.path.exists(path + ".free")  # the temp file became the target
