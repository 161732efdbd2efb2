"""`charger-update`: the one command line for release engineers, operators and the daemon.

Each command group lives in its own module with a `register(subparsers)` function that adds
its parser and sets `func` (args -> exit code). This file only dispatches and turns every
UpdateError into a one-line message, a hint, and the error's documented exit code.
"""

import argparse
import importlib
import os
import sys

from agent import __version__
from agent.commands._text import printable
from agent.core.errors import UpdateError

# Order is the order of `charger-update --help`.
COMMAND_MODULES = (
    "agent.commands.keygen",
    "agent.commands.bundle",
    "agent.commands.root",
    "agent.commands.install",
    "bootloader_iface.cli",
    "agent.commands.run",
)

EPILOG = """\
exit codes: 0 ok, 1 other failure, 2 usage, 10 bad signature, 11 unknown key, 12 expired
(or created too far ahead of this device's time), 13 downgrade (or trusted root rolled back),
14 wrong model, 15 wrong hardware revision, 16 payload hash/length mismatch, 17 truncated,
18 not enough space, 19 malformed bundle, 20 config or local file error (also damaged state
files), 21 boot env error, 22 read-back mismatch, 23 malformed job, 24 bad source (bundle file
missing, a directory or not a regular file; a URL a job may not use), 25 version mismatch,
30 OCPP signing certificate refused (bundle verify-ocpp: unknown root, expired, revoked),
75 temporary failure (network, broker, state dir locked by another process: retry later),
130 interrupted. See docs/ for the bundle format, config file, MQTT API and docs/security.md.
"""


def _columns():
    """The terminal's width as shutil.get_terminal_size gives it ($COLUMNS, the terminal, else
    80), without importing shutil: argparse would, for every parser, and shutil loads bz2 and
    lzma (3 ms of every start; docs/transfer.md)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that tells its help formatter the width (see _columns); the
    sub-parsers, nested ones too, are of the same class."""

    def __init__(self, *args, formatter_class=argparse.HelpFormatter, **kwargs):
        width = max(_columns() - 2, 20)  # what argparse takes off the width itself

        def formatter(prog):
            return formatter_class(prog, width=width)

        argparse.ArgumentParser.__init__(self, *args, formatter_class=formatter, **kwargs)


def build_parser():
    parser = _Parser(
        prog="charger-update",
        description="Signed A/B updates for EV charger controllers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="agent config (default: $CHARGER_UPDATE_CONFIG or /etc/charger-update/agent.toml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _accept_anywhere(parser, ("--config", "-v", "--verbose"))
    return parser


def _accept_anywhere(parser, options):
    """Let the global options also follow a command (`charger-update run --config X`, as a
    systemd unit is usually written): every sub-parser, nested ones too, learns them with
    no default of its own, so a value given before the command survives."""
    globals_ = [a for a in parser._actions if set(a.option_strings) & set(options)]
    _teach(parser, globals_)


def _teach(parser, globals_):
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in action.choices.values():
            taken = set(o for a in sub._actions for o in a.option_strings)
            for g in globals_:
                flags = [o for o in g.option_strings if o not in taken]
                if not flags:
                    continue
                kwargs = {"dest": g.dest, "help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
                if g.nargs == 0:
                    sub.add_argument(*flags, action="store_true", **kwargs)
                else:
                    sub.add_argument(*flags, metavar=g.metavar, **kwargs)
            _teach(sub, globals_)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except UpdateError as e:
        # Messages quote bundles, roots and servers: never let them drive the terminal.
        print("charger-update: error: %s" % printable(e.message), file=sys.stderr)
        if e.hint:
            print("  hint: %s" % printable(e.hint), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("charger-update: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
