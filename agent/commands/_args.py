"""Argument helpers shared by the release-engineering commands (keygen, bundle, root)."""

import argparse
import os
import time

from agent.core import timefmt
from agent.core.errors import ConfigError
from agent.state.atomic import write_atomic

LAST_TIME = timefmt.parse("9999-12-31T23:59:59Z")  # RFC 3339 ends with year 9999


def expires_at(text, now=None):
    """'30' (days from now) or '2027-01-01T00:00:00Z' -> epoch seconds, in the future.

    Something already expired is a usage error: every charger would refuse it."""
    now = int(time.time() if now is None else now)
    if text.isascii() and text.isdigit():
        value = now + int(text) * 86400
    else:
        try:
            value = timefmt.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                "%r is neither a number of days nor YYYY-MM-DDTHH:MM:SSZ" % text
            ) from None
    if value > LAST_TIME:
        raise argparse.ArgumentTypeError("%r lies beyond the year 9999" % text)
    if value <= now:
        raise argparse.ArgumentTypeError(
            "%r is not in the future: every charger would refuse what expired already" % text
        )
    return value


def positive_int(text):
    """An argparse type: an integer >= 1 (a threshold of 0 would mean "no signature")."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("%r is not a whole number of at least 1" % text)
    return value


def check_output(path):
    """ConfigError unless `path` can be written as a new file: its directory exists and it is
    not itself a directory. Called before any work, so nothing half-made is left behind."""
    if os.path.isdir(path):
        raise ConfigError("output %s is a directory" % path, hint="give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(
            "cannot write %s: directory %s does not exist" % (path, directory),
            hint="create it first, or choose another path",
        )


def write_output(path, data):
    """Write a command's output file power-safely, as one error line when that fails."""
    check_output(path)
    try:
        write_atomic(path, data)
    except OSError as e:
        raise ConfigError("cannot write %s: %s" % (path, e.strerror or e)) from None


def read_input(path, what):
    """A small input file's bytes (a root, a signature), or one ConfigError line."""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise ConfigError("cannot read %s %s: %s" % (what, path, e.strerror or e)) from None


def add_expires(parser, default_days):
    parser.add_argument(
        "--expires",
        type=expires_at,
        default=str(default_days),
        metavar="DAYS|DATE",
        help="days from now, or a UTC time YYYY-MM-DDTHH:MM:SSZ (default %d days)" % default_days,
    )
