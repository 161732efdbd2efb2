"""U-Boot env: byte-exact with mkenvimage, both-way interop with fw_printenv/fw_setenv,
and a clear BootEnvError (never a guess) for every kind of corrupt env or config."""

import fcntl
import os
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.errors import BootEnvError, Transient
from bootloader_iface.uboot_env import (
    UBootEnv,
    decode_data,
    encode_copy,
    newer_copy,
    parse_config,
    parse_copy,
)
from tests.bootloader.conftest import (
    ENV_SIZE,
    fw_printenv,
    fw_printenv_value,
    have,
    write_fw_config,
)

VARS = {
    "bootcmd": "run charger_boot",
    "BOOT_ORDER": "A B",
    "BOOT_A_LEFT": "3",
    "empty": "",
    "eq": "a=b=c",
    "spaces": "  lead and trail  ",
}


def mkenvimage(tmp_path, variables, redundant):
    have("mkenvimage")
    src = tmp_path / "vars.txt"
    # mkenvimage keeps input order; fw_setenv (and we) sort: feed it sorted.
    src.write_bytes(
        b"".join(b"%s=%s\n" % (k.encode(), variables[k].encode()) for k in sorted(variables))
    )
    out = tmp_path / "mkenv.img"
    cmd = ["mkenvimage", "-s", "0x%x" % ENV_SIZE, "-o", str(out), str(src)]
    if redundant:
        cmd.insert(1, "-r")
    subprocess.run(cmd, check=True)
    return out.read_bytes()


@pytest.mark.parametrize("redundant", [False, True], ids=["single", "redundant"])
def test_encoding_is_byte_identical_to_mkenvimage(tmp_path, redundant):
    flags = 1 if redundant else 0
    assert encode_copy(VARS, ENV_SIZE, redundant, flags) == mkenvimage(tmp_path, VARS, redundant)


@pytest.mark.parametrize("redundant", [False, True], ids=["single", "redundant"])
def test_mkenvimage_image_is_read_by_us(tmp_path, redundant):
    cfg, image = write_fw_config(tmp_path, redundant)
    blob = mkenvimage(tmp_path, VARS, redundant)
    with open(image, "r+b") as f:
        f.write(blob)
    assert UBootEnv(cfg).read() == VARS


@pytest.mark.parametrize("redundant", [False, True], ids=["single", "redundant"])
def test_our_writes_are_read_by_fw_printenv(tmp_path, redundant):
    cfg, _ = write_fw_config(tmp_path, redundant)
    env = UBootEnv(cfg)
    env.format({"bootcmd": "boot", "gone": "x"})
    for i in range(3):  # several writes: exercises both copies and the flag sequence
        env.write(dict(VARS, counter=str(i)), ["gone"])
        assert fw_printenv(cfg) == dict(VARS, bootcmd="run charger_boot", counter=str(i))
    env.write({"multi": "line1\nline2"})
    assert fw_printenv_value(cfg, "multi") == "line1\nline2"


@pytest.mark.parametrize("redundant", [False, True], ids=["single", "redundant"])
def test_fw_setenv_writes_are_read_by_us(tmp_path, redundant):
    cfg, _ = write_fw_config(tmp_path, redundant)
    env = UBootEnv(cfg)
    env.format({"bootcmd": "boot", "drop": "me"})
    for i in range(3):
        subprocess.run(["fw_setenv", "-c", cfg, "BOOT_ORDER", "B A %d" % i], check=True)
    subprocess.run(["fw_setenv", "-c", cfg, "drop"], check=True)  # no value deletes
    assert env.read() == {"bootcmd": "boot", "BOOT_ORDER": "B A 2"}
    env.write({"ours": "1"})
    subprocess.run(["fw_setenv", "-c", cfg, "theirs", "2"], check=True)
    assert env.read() == {"bootcmd": "boot", "BOOT_ORDER": "B A 2", "ours": "1", "theirs": "2"}


def test_unknown_variables_survive_our_writes(tmp_path):
    cfg, _ = write_fw_config(tmp_path, True)
    env = UBootEnv(cfg)
    env.format(VARS)
    env.write({"BOOT_ORDER": "B A"})
    assert env.read() == dict(VARS, BOOT_ORDER="B A")


def test_redundant_write_goes_to_the_inactive_copy_with_next_flag(tmp_path):
    cfg, image = write_fw_config(tmp_path, True)
    env = UBootEnv(cfg)
    env.format({"a": "1"})  # copy 0 flag 1, copy 1 flag 0
    env.write({"a": "2"})
    raw = open(image, "rb").read()
    assert (raw[4], raw[ENV_SIZE + 4]) == (1, 2)
    assert parse_copy(raw[:ENV_SIZE], True)[0] == {"a": "1"}  # the old copy is untouched
    assert env.read_state()[1] == 1


@pytest.mark.parametrize(
    "flags, winner",
    [((1, 2), 1), ((2, 1), 0), ((255, 0), 1), ((0, 255), 0), ((7, 7), 0), ((254, 255), 1)],
)
def test_newer_flag_wins_with_wrap_around(tmp_path, flags, winner):
    """Same choice as fw_printenv: hand-made copies with the given flags."""
    cfg, image = write_fw_config(tmp_path, True)
    with open(image, "r+b") as f:
        f.write(encode_copy({"copy": "0"}, ENV_SIZE, True, flags[0]))
        f.write(encode_copy({"copy": "1"}, ENV_SIZE, True, flags[1]))
    assert newer_copy(*flags) == winner
    assert UBootEnv(cfg).read() == {"copy": str(winner)}
    assert fw_printenv(cfg) == {"copy": str(winner)}


def test_write_after_wrap_continues_from_zero(tmp_path):
    cfg, image = write_fw_config(tmp_path, True)
    with open(image, "r+b") as f:
        f.write(encode_copy({"v": "old"}, ENV_SIZE, True, 254))
        f.write(encode_copy({"v": "new"}, ENV_SIZE, True, 255))
    env = UBootEnv(cfg)
    env.write({"v": "newer"})
    raw = open(image, "rb").read()
    assert raw[4] == 0
    assert env.read() == {"v": "newer"}
    assert fw_printenv(cfg) == {"v": "newer"}


# --- corrupt envs and configs: a clear error, never a guess --------------------------------


def test_bad_crc_in_both_copies_is_refused(tmp_path):
    cfg, image = write_fw_config(tmp_path, True)
    UBootEnv(cfg).format({"BOOT_ORDER": "A B"})
    with open(image, "r+b") as f:
        for offset in (20, ENV_SIZE + 20):
            f.seek(offset)
            f.write(b"X")
    with pytest.raises(BootEnvError, match="both copies"):
        UBootEnv(cfg).read()


def test_bad_crc_in_one_copy_uses_the_other(tmp_path):
    cfg, image = write_fw_config(tmp_path, True)
    env = UBootEnv(cfg)
    env.format({"v": "1"})
    env.write({"v": "2"})  # copy 1 now newest
    with open(image, "r+b") as f:
        f.seek(ENV_SIZE + 30)
        f.write(b"\x00")
    assert env.read() == {"v": "1"}


def test_single_copy_bad_crc_is_refused(tmp_path):
    cfg, image = write_fw_config(tmp_path, False)
    UBootEnv(cfg).format({"a": "1"})
    with open(image, "r+b") as f:
        f.seek(6)
        f.write(b"b")
    with pytest.raises(BootEnvError, match="bad CRC"):
        UBootEnv(cfg).read()


def test_blank_flash_is_refused(tmp_path):
    cfg, _ = write_fw_config(tmp_path, False)  # all 0xFF, never written
    with pytest.raises(BootEnvError):
        UBootEnv(cfg).read()


def test_truncated_env_file_is_refused(tmp_path):
    cfg, image = write_fw_config(tmp_path, True)
    UBootEnv(cfg).format({"a": "1"})
    with open(image, "r+b") as f:
        f.truncate(ENV_SIZE + 100)
    with pytest.raises(BootEnvError, match="truncated"):
        UBootEnv(cfg).read()


def test_env_size_mismatch_with_config_is_refused(tmp_path):
    cfg, image = write_fw_config(tmp_path, False)
    UBootEnv(cfg).format({"a": "1"})
    (tmp_path / "wrong.config").write_text("%s 0x0 0x2000\n" % image)
    with pytest.raises(BootEnvError):  # the CRC over a different length cannot match
        UBootEnv(str(tmp_path / "wrong.config")).read()


def test_missing_config_is_refused(tmp_path):
    with pytest.raises(BootEnvError, match="cannot read U-Boot env config") as e:
        UBootEnv(str(tmp_path / "nope.config"))
    assert e.value.hint


def test_missing_device_is_refused(tmp_path):
    (tmp_path / "c").write_text("%s 0x0 0x4000\n" % (tmp_path / "missing.img"))
    with pytest.raises(BootEnvError, match="cannot read"):
        UBootEnv(str(tmp_path / "c")).read()


def test_valid_crc_without_end_marker_is_refused():
    with pytest.raises(BootEnvError, match="end marker"):
        decode_data(b"a=1\x00b=2")


def test_entry_without_equals_is_refused():
    with pytest.raises(BootEnvError, match="no name="):
        decode_data(b"a=1\x00junk\x00\x00")


@pytest.mark.parametrize(
    "text, match",
    [
        ("/dev/mtd1 0x0 16384\n", "0x-prefixed"),  # libubootenv reads hex, U-Boot's decimal
        ("/dev/mtd1 0x0\n", "expected"),
        ("", "one line"),
        ("/a 0x0 0x4000\n/b 0x0 0x4000\n/c 0x0 0x4000\n", "one line"),
        ("/a 0x0 0x4000\n/b 0x0 0x2000\n", "same size"),
        ("/a 0x0 0xzz\n", "0x-prefixed"),
    ],
)
def test_bad_config_is_refused(text, match):
    with pytest.raises(BootEnvError, match=match):
        parse_config(text, "fw_env.config")


def test_config_with_comments_sectors_and_hex():
    copies = parse_config("# NOR\n/dev/mtd1 0x0 0x4000 0x10000 2  # first\n/dev/mtd2 0 0X4000\n")
    assert copies[0] == {
        "device": "/dev/mtd1",
        "offset": 0,
        "size": 0x4000,
        "sector_size": 0x10000,
        "sectors": 2,
    }
    assert copies[1]["size"] == 0x4000


# --- round trips and limits ---------------------------------------------------------------

names = st.text(
    st.characters(blacklist_characters="=\x00", blacklist_categories=("Cs",)), min_size=1
)
values = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, values, max_size=8))
def test_round_trip_awkward_values(variables):
    for redundant in (False, True):
        blob = encode_copy(variables, 0x1000, redundant)
        assert parse_copy(blob, redundant)[0] == variables


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(names.filter(lambda s: "\n" not in s), values, max_size=5))
def test_round_trip_through_fw_printenv(tmp_path, variables):
    cfg, _ = write_fw_config(tmp_path, True, name="hyp.env")
    UBootEnv(cfg).format(variables)
    for key, value in variables.items():
        assert fw_printenv_value(cfg, key) == value


def test_largest_env_that_fits_and_one_byte_more(tmp_path):
    capacity = ENV_SIZE - 5
    value = "x" * (capacity - len("big=") - 2)  # entry NUL + final NUL
    blob = encode_copy({"big": value}, ENV_SIZE, True)
    assert parse_copy(blob, True)[0] == {"big": value}
    with pytest.raises(BootEnvError, match="holds only"):
        encode_copy({"big": value + "x"}, ENV_SIZE, True)
    cfg, _ = write_fw_config(tmp_path, True)
    env = UBootEnv(cfg)
    env.format({"big": value})
    assert fw_printenv_value(cfg, "big") == value
    with pytest.raises(BootEnvError):
        env.write({"more": "1"})
    assert env.read() == {"big": value}  # a refused write changed nothing


@pytest.mark.parametrize("key", ["", "a=b", "nul\x00"])
def test_invalid_names_are_refused(key):
    with pytest.raises(BootEnvError):
        encode_copy({key: "v"}, ENV_SIZE, False)


def test_single_copy_file_is_replaced_by_rename(tmp_path):
    cfg, image = write_fw_config(tmp_path, False)
    env = UBootEnv(cfg)
    env.format({"a": "1"})
    before = os.stat(image).st_ino
    env.write({"a": "2"})
    assert os.stat(image).st_ino != before  # a new file: the old one was never half-written
    assert fw_printenv(cfg) == {"a": "2"}
    in_place = UBootEnv(cfg, in_place=True)
    inode = os.stat(image).st_ino
    in_place.write({"a": "3"})
    assert os.stat(image).st_ino == inode
    assert struct.unpack_from("<I", open(image, "rb").read())[0] != 0


def test_write_waits_for_fw_setenv_lock_and_gives_up_transiently(tmp_path):
    """A concurrent fw_setenv holds flock on its lock file: we must not interleave with it."""
    cfg, _ = write_fw_config(tmp_path, True)
    lock = str(tmp_path / "fw_printenv.lock")
    env = UBootEnv(cfg, lock_file=lock)
    env.format({"a": "1"})
    env.lock_timeout = 0
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(Transient, match="locked"):
            env.write({"a": "2"})
    env.write({"a": "3"})  # released: goes through
    assert env.read() == {"a": "3"}


printable_names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="=#\\"), min_size=1
)
printable_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)).filter(
    lambda v: not v.endswith("\\")
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(printable_names, printable_values, max_size=6))
def test_encoding_matches_mkenvimage_for_generated_envs(tmp_path, variables):
    for redundant in (False, True):
        expected = mkenvimage(tmp_path, variables, redundant)
        assert encode_copy(variables, ENV_SIZE, redundant, 1 if redundant else 0) == expected


def test_redundant_copies_in_two_files_interoperate(tmp_path):
    first, second = tmp_path / "env1.img", tmp_path / "env2.img"
    for path in (first, second):
        path.write_bytes(b"\xff" * ENV_SIZE)
    cfg = tmp_path / "fw_env.config"
    cfg.write_text("%s 0x0 0x%x\n%s 0x0 0x%x\n" % (first, ENV_SIZE, second, ENV_SIZE))
    env = UBootEnv(str(cfg))
    env.format({"a": "1"})
    env.write({"b": "2"})
    subprocess.run(["fw_setenv", "-c", str(cfg), "c", "3"], check=True)
    env.write({"d": "4"})
    assert fw_printenv(str(cfg)) == {"a": "1", "b": "2", "c": "3", "d": "4"}
    assert env.read() == {"a": "1", "b": "2", "c": "3", "d": "4"}


def test_unchanged_env_is_not_rewritten(tmp_path):
    """mark_good runs on every healthy boot: it must not wear the flash when nothing changes."""
    cfg, image = write_fw_config(tmp_path, True)
    env = UBootEnv(cfg)
    env.format({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3"})
    before = open(image, "rb").read()
    env.write({"BOOT_A_LEFT": "3"}, ["not_there"])
    assert open(image, "rb").read() == before
    env.write({"BOOT_A_LEFT": "2"})
    assert open(image, "rb").read() != before
