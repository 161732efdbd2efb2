"""Every mistake on the command line ends in one `charger-update: error:` line (or argparse's
usage line) and a documented exit code, never a traceback (issue 11: adversarial review #19,
#23-#26). Real files, real keys; `main()` in-process so a traceback fails the test."""

import logging
import os

import pytest

from agent.cli import main
from agent.commands._text import printable
from agent.core import errors
from agent.core.envelope import Envelope
from tests.bundle.factory import HW, MODEL, make_bundle, make_root
from tests.bundle.test_attacks import rewrite, split

USAGE = 2


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rootfs.img").write_bytes(os.urandom(5000))
    (tmp_path / "adir").mkdir()
    for name in ("root1", "rel1"):
        assert main(["keygen", "--out", name]) == 0
    return tmp_path


def run(argv, capsys):
    """(exit code, stderr) of one command; argparse's usage errors included."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def one_error_line(err):
    lines = [line for line in err.splitlines() if not line.startswith("  hint:")]
    return len(lines) == 1 and lines[0].startswith("charger-update: error: ")


def create_args(out="b.cub", expires="30", payload="rootfs:rootfs:rootfs.img"):
    return ["bundle", "create", "--key", "rel1.key", "--version", "1.2.0",
            "--security-version", "3", "--model", MODEL, "--hw-rev", HW,
            "--expires", expires, "--payload", payload, "-o", out]  # fmt: skip


# -- files that are missing or directories (#23) -------------------------------------------


@pytest.mark.parametrize("action", ["verify", "inspect"])
@pytest.mark.parametrize("path", ["missing.cub", "adir"])
def test_missing_or_directory_bundle_file_is_one_error_line(work, capsys, action, path):
    make_root(str(work / "root.json"))
    extra = ["--root", "root.json"] if action == "verify" else []
    code, err = run(["bundle", action, path] + extra, capsys)
    assert code == errors.BadSource.exit_code and one_error_line(err)


@pytest.mark.parametrize("action", [["show"], ["sign", "--key", "root1.key"]])
@pytest.mark.parametrize("path", ["missing.json", "adir"])
def test_missing_or_directory_root_file_is_one_error_line(work, capsys, action, path):
    code, err = run(["root", action[0], path] + action[1:], capsys)
    assert code == errors.ConfigError.exit_code and one_error_line(err)


def test_root_update_from_a_missing_file_is_one_error_line(work, capsys):
    _, root = make_bundle(work)
    (work / "agent.toml").write_text(
        '[device]\nid = "cp"\nmodel = "M"\nhardware_revision = "r"\n'
        '[slots.A]\nrootfs = "a.img"\n[slots.B]\nrootfs = "b.img"\n'
        '[bootloader]\nbackend = "simulated"\nstate = "boot.json"\n[state]\ndir = "state"\n'
        '[trust]\nroot = "%s"\n' % root
    )
    code, err = run(["--config", "agent.toml", "root", "update", "missing.json"], capsys)
    assert code == errors.ConfigError.exit_code and one_error_line(err)


# -- outputs that cannot be written (#23) --------------------------------------------------


@pytest.mark.parametrize("payload", ["rootfs:rootfs:rootfs.img", "rootfs:rootfs:rootfs.img:gzip"])
def test_bundle_create_into_a_missing_directory_is_one_error_line(work, capsys, payload):
    code, err = run(create_args(out="nowhere/b.cub", payload=payload), capsys)
    assert code == errors.ConfigError.exit_code and one_error_line(err)


def test_bundle_create_onto_a_directory_leaves_nothing_behind(work, capsys):
    code, err = run(create_args(out="adir"), capsys)
    assert code == errors.ConfigError.exit_code and one_error_line(err)
    assert sorted(os.listdir(work)) == sorted(
        ["adir", "rel1.key", "rel1.pub", "root1.key", "root1.pub", "rootfs.img"]
    )  # no adir.tmp, no staged gzip


def test_keygen_into_a_missing_directory_is_one_error_line(work, capsys):
    code, err = run(["keygen", "--out", "nowhere/k"], capsys)
    assert code == errors.ConfigError.exit_code and one_error_line(err)


def test_root_create_into_a_missing_directory_is_one_error_line(work, capsys):
    code, err = run(["root", "create", "--root-key", "root1.pub", "--release-key", "rel1.pub",
                     "-o", "nowhere/root.json"], capsys)  # fmt: skip
    assert code == errors.ConfigError.exit_code and one_error_line(err)


# -- --expires and thresholds (#23, #25) ----------------------------------------------------


@pytest.mark.parametrize("expires", ["99999999", "2020-01-01T00:00:00Z", "0", "²"])
def test_bundle_create_with_an_impossible_expiry_is_a_usage_error(work, capsys, expires):
    code, err = run(create_args(expires=expires), capsys)
    assert code == USAGE and "--expires" in err
    assert not (work / "b.cub").exists()


ROOT_CREATE = ["root", "create", "--root-key", "root1.pub", "--release-key", "rel1.pub",
               "--sign", "root1.key", "-o", "root.json"]  # fmt: skip


@pytest.mark.parametrize("expires", ["99999999", "2020-01-01T00:00:00Z"])
def test_root_create_already_expired_or_past_9999_is_refused(work, capsys, expires):
    """An expired root is refused (not merely warned about): no charger would accept it."""
    code, err = run(ROOT_CREATE + ["--expires", expires], capsys)
    assert code == USAGE and "--expires" in err
    assert not (work / "root.json").exists()


@pytest.mark.parametrize(
    "option", ["--threshold", "--root-threshold", "--release-threshold", "--version"]
)
def test_root_create_threshold_zero_is_a_usage_error(work, capsys, option):
    """--threshold 0 used to be turned silently into 1."""
    code, err = run(ROOT_CREATE + [option, "0"], capsys)
    assert code == USAGE and option in err
    assert not (work / "root.json").exists()


def test_root_create_threshold_above_the_key_count_is_one_error_line(work, capsys):
    code, err = run(ROOT_CREATE + ["--threshold", "2"], capsys)
    assert code == errors.MalformedBundle.exit_code and one_error_line(err)


# -- config files (#23) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "download",
    ['timeout_s = "abc"', "chunk_size = 0", "retries = -1", "max_time_s = nan",
     'file_dir = 5', "max_rate = true"],
)  # fmt: skip
def test_bad_download_settings_are_one_config_error_line(work, capsys, download):
    (work / "agent.toml").write_text(
        '[device]\nid = "cp"\nmodel = "M"\nhardware_revision = "r"\n'
        '[slots.A]\nrootfs = "a.img"\n[slots.B]\nrootfs = "b.img"\n'
        '[bootloader]\nbackend = "simulated"\nstate = "boot.json"\n[state]\ndir = "state"\n'
        "[download]\n%s\n" % download
    )
    code, err = run(["--config", "agent.toml", "install", "x.cub"], capsys)
    assert code == errors.ConfigError.exit_code and one_error_line(err)
    assert download.split()[0] in err


def test_config_file_of_binary_junk_is_one_config_error_line(work, capsys):
    (work / "agent.toml").write_bytes(os.urandom(64) + b"\xff\xfe\x80")
    code, err = run(["--config", "agent.toml", "boot", "status"], capsys)
    assert code == errors.ConfigError.exit_code and one_error_line(err)


# -- local bundles that are missing: permanent, not "try again later" (#24) -----------------


@pytest.mark.parametrize("source", ["missing.cub", "adir", "file://{work}/missing.cub"])
def test_missing_or_directory_local_bundle_is_not_a_temporary_failure(work, capsys, source):
    _, root = make_bundle(work, name="unused.cub")
    (work / "agent.toml").write_text(
        '[device]\nid = "cp"\nmodel = "%s"\nhardware_revision = "%s"\n'
        '[slots.A]\nrootfs = "a.img"\n[slots.B]\nrootfs = "b.img"\n'
        '[bootloader]\nbackend = "simulated"\nstate = "boot.json"\nbooted = "A"\n'
        '[state]\ndir = "state"\n'
        '[trust]\nroot = "%s"\n' % (MODEL, HW, root)
    )
    source = source.format(work=work)
    code, err = run(["--config", "agent.toml", "install", source], capsys)
    assert code == errors.BadSource.exit_code and code != 75 and one_error_line(err)


# -- terminal escapes from unverified input (#19) ------------------------------------------

ANSI = "\x1b]0;owned\x07\x1b[2J\x1b[31mTRUSTED-KEY\x1b[0m"


def test_key_id_with_terminal_escapes_never_reaches_the_screen(work, capsys):
    """Review #19: an unverified key id used to be printed raw (clear screen, retitle)."""
    bundle, root = make_bundle(work)
    env, payloads = split(bundle)
    forged = [(ANSI, sig) for _, sig in env.signatures]
    rewrite(bundle, Envelope(env.payload_type, env.payload, forged), payloads)
    for argv in (["bundle", "inspect", bundle], ["bundle", "verify", bundle, "--root", root]):
        code = main(argv)
        out = capsys.readouterr()
        assert code == errors.MalformedBundle.exit_code
        assert "\x1b" not in out.out + out.err and "TRUSTED" not in out.out + out.err


def test_error_line_never_carries_terminal_escapes(work, capsys, monkeypatch):
    import agent.commands.keygen as keygen

    def rogue(args):
        raise errors.NetworkError("HTTP 404 " + ANSI + "\u202eevil", hint="\x9b2J")

    monkeypatch.setattr(keygen, "run", rogue)
    code, err = run(["keygen", "--out", "k"], capsys)
    assert code == 75 and "\x1b" not in err and "\x9b" not in err and "\u202e" not in err
    assert "\\x1b[2J" in err and "\\u202e" in err and one_error_line(err)


def test_daemon_log_lines_never_carry_terminal_escapes():
    from agent.commands.run import InertFormatter

    record = logging.LogRecord("charger-update", logging.INFO, __file__, 1,
                               "ignoring job %s: %s", (ANSI, "dup"), None)  # fmt: skip
    line = InertFormatter("%(message)s").format(record)
    assert "\x1b" not in line and "\\x1b]0;owned\\x07" in line


def test_printable_keeps_ordinary_text_and_escapes_controls():
    assert printable("slot B: 1.2.0-rc.1 ÄÖ ✓") == "slot B: 1.2.0-rc.1 ÄÖ ✓"
    assert printable("a\nb\tc\x7f\x85") == "a\\x0ab\\x09c\\x7f\\x85"
