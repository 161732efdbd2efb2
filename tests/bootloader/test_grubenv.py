"""grubenv: the same bytes as grub-editenv for the same edits, both-way interop, escaping."""

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.errors import BootEnvError
from bootloader_iface.grubenv import (
    BLOCK_SIZE,
    SIGNATURE,
    GrubEnv,
    blank,
    encode,
    parse,
    variables,
)
from tests.bootloader.conftest import have


def editenv(path, *args):
    have("grub-editenv")
    return subprocess.run(
        ["grub-editenv", str(path), *args], capture_output=True, check=True
    ).stdout.decode("utf-8", "surrogateescape")


def listing(env):
    return "".join("%s=%s\n" % (k, v) for k, v in env.items())


def test_blank_block_is_byte_identical_to_grub_editenv_create(tmp_path):
    editenv(tmp_path / "theirs", "create")
    assert blank() == (tmp_path / "theirs").read_bytes()


EDITS = [
    ({"a": "1", "b": "x\\y", "c": "line1\nline2", "d": "e=f", "e": ""}, ()),
    ({"a": "2", "z": "9"}, ()),
    ({}, ("b",)),
    ({"c": "short", "new": "\\\n\\"}, ("e",)),
]


def test_edits_are_byte_identical_to_grub_editenv(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    editenv(theirs, "create")
    editenv(ours, "create")
    env = GrubEnv(str(ours))
    for changes, deletions in EDITS:
        env.write(changes, deletions)
        # grub-editenv sets in argument order: give it ours (sorted new names).
        if changes:
            editenv(theirs, "set", *["%s=%s" % (k, changes[k]) for k in sorted(changes)])
        if deletions:
            editenv(theirs, "unset", *deletions)
        assert ours.read_bytes() == theirs.read_bytes()


def test_our_writes_are_listed_by_grub_editenv(tmp_path):
    path = tmp_path / "grubenv"
    editenv(path, "create")
    env = GrubEnv(str(path))
    state = env.write({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "odd": "a\\b\nc=d"})
    assert editenv(path, "list") == listing(state)


def test_grub_editenv_writes_are_read_by_us(tmp_path):
    path = tmp_path / "grubenv"
    editenv(path, "create")
    editenv(path, "set", "BOOT_ORDER=B A", "x=back\\slash", "nl=1\n2", "eq==")
    editenv(path, "unset", "x")
    assert GrubEnv(str(path)).read() == {"BOOT_ORDER": "B A", "nl": "1\n2", "eq": "="}


def test_block_size_is_kept(tmp_path):
    path = tmp_path / "grubenv"
    editenv(path, "create")
    GrubEnv(str(path)).write({"a": "1"})
    assert path.stat().st_size == BLOCK_SIZE


names = st.text(
    st.characters(blacklist_characters="=\\\n\x00", blacklist_categories=("Cs",)), min_size=1
).filter(lambda s: not s.startswith("#"))
values = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, values, max_size=6))
def test_round_trip_awkward_values(env):
    try:
        block = encode([("var", k, v) for k, v in env.items()])
    except BootEnvError:
        return  # too big for 1024 bytes: covered by its own test
    assert variables(parse(block)) == env


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(names.filter(str.isprintable), values, max_size=4))
def test_round_trip_through_grub_editenv(tmp_path, env):
    path = tmp_path / "hyp.grubenv"
    try:
        block = encode([("var", k, v) for k, v in env.items()])
    except BootEnvError:
        return
    path.write_bytes(block)
    assert editenv(path, "list") == listing(env)


def test_largest_value_that_fits_and_one_byte_more(tmp_path):
    path = tmp_path / "grubenv"
    editenv(path, "create")
    room = BLOCK_SIZE - len(blank().rstrip(b"#")) - len("big=\n")
    env = GrubEnv(str(path))
    env.write({"big": "x" * room})
    assert path.read_bytes().endswith(b"x\n")  # exactly full, no padding left
    assert editenv(path, "list") == "big=%s\n" % ("x" * room)
    with pytest.raises(BootEnvError, match="holds"):
        env.write({"big": "x" * (room + 1)})
    with pytest.raises(BootEnvError):
        env.write({"more": ""})
    assert env.read() == {"big": "x" * room}


@pytest.mark.parametrize("name", ["", "a=b", "a\nb", "#c", "back\\slash"])
def test_invalid_names_are_refused(name):
    with pytest.raises(BootEnvError):
        encode([("var", name, "v")])


@pytest.mark.parametrize(
    "block, match",
    [
        (b"not a grubenv" + b"#" * 1011, "signature"),
        (SIGNATURE + b"broken line without equals\n" + b"#" * 900, "no '='"),
        (b"# GRUB Environment Block\nunterminated=value", "no end"),
        (b"# GRUB Environment Bl", "truncated"),
    ],
)
def test_corrupt_block_is_refused(tmp_path, block, match):
    path = tmp_path / "grubenv"
    path.write_bytes(block)
    with pytest.raises(BootEnvError, match=match):
        GrubEnv(str(path)).read()


def test_missing_file_is_refused_with_a_hint(tmp_path):
    with pytest.raises(BootEnvError) as e:
        GrubEnv(str(tmp_path / "none")).read()
    assert "grub-editenv" in e.value.hint
