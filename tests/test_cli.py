"""The command line: global options work before or after the command (systemd units are
usually written `charger-update run --config PATH`)."""

import pytest

from agent.cli import build_parser, main


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "/etc/a.toml", "run"],
        ["run", "--config", "/etc/a.toml"],
        ["boot", "status", "--config", "/etc/a.toml", "--json"],
        ["bundle", "inspect", "x.cub", "--config", "/etc/a.toml"],
    ],
)
def test_config_accepted_before_or_after_the_command(argv):
    assert build_parser().parse_args(argv).config == "/etc/a.toml"


def test_missing_config_file_is_a_clear_error(tmp_path, capsys):
    code = main(["install", "x.cub", "--config", str(tmp_path / "nope.toml")])
    err = capsys.readouterr().err
    assert code == 20 and "does not exist" in err and "hint" in err


def test_every_exit_code_an_error_can_have_is_in_the_help():
    import agent.trust.manufacturer  # noqa: F401 - its CertificateProblem has its own code
    from agent.cli import EPILOG
    from agent.core.errors import UpdateError

    def codes(cls):
        found = {cls.exit_code} if isinstance(getattr(cls, "exit_code", None), int) else set()
        for sub in cls.__subclasses__():
            found |= codes(sub)
        return found

    text = " ".join(EPILOG.split())
    missing = [c for c in sorted(codes(UpdateError)) if " %d " % c not in text]
    assert missing == [], "exit codes missing from `charger-update --help`: %s" % missing
