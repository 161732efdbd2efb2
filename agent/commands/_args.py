"""Argument helpers shared by the release-engineering commands (keygen, bundle, root)."""

import argparse
import time

from agent.core import timefmt


def expires_at(text, now=None):
    """'30' (days from now) or '2027-01-01T00:00:00Z' -> epoch seconds."""
    now = int(time.time() if now is None else now)
    if text.isdigit():
        return now + int(text) * 86400
    try:
        return timefmt.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "%r is neither a number of days nor YYYY-MM-DDTHH:MM:SSZ" % text
        ) from None


def add_expires(parser, default_days):
    parser.add_argument(
        "--expires",
        type=expires_at,
        default=str(default_days),
        metavar="DAYS|DATE",
        help="days from now, or a UTC time YYYY-MM-DDTHH:MM:SSZ (default %d days)" % default_days,
    )
