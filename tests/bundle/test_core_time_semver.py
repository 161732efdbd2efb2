import calendar
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import semver, timefmt


@pytest.mark.parametrize(
    "text",
    [
        "1970-01-01T00:00:00Z",
        "2000-02-29T12:34:56Z",
        "2026-11-24T23:00:00Z",
        "1969-12-31T23:59:59Z",
    ],
)
def test_timefmt_matches_calendar_timegm(text):
    expected = calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    assert timefmt.parse(text) == expected
    assert timefmt.format(expected) == text


@settings(deadline=None)
@given(st.integers(min_value=-62135596800, max_value=253402300799))
def test_timefmt_round_trip(epoch):
    assert timefmt.parse(timefmt.format(epoch)) == epoch


@pytest.mark.parametrize(
    "bad",
    [
        "2026-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:00:00+01:00",
        "2026-01-01 00:00:00Z",
        "2026-01-01T00:00:00z",
        "+026-01-01T00:00:00Z",
        "",
        None,
        12,
    ],
)
def test_timefmt_refuses_non_canonical(bad):
    with pytest.raises(ValueError):
        timefmt.parse(bad)


@pytest.mark.parametrize(
    "ordered",
    [
        [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.10.0",
            "2.0.0",
        ]
    ],
)
def test_semver_precedence_from_the_spec(ordered):
    for i, a in enumerate(ordered):
        for j, b in enumerate(ordered):
            assert semver.compare(a, b) == (i > j) - (i < j), (a, b)


def test_semver_build_metadata_does_not_order():
    assert semver.compare("1.2.3+build.1", "1.2.3+build.2") == 0


@pytest.mark.parametrize(
    "bad", ["1.2", "1.2.3.4", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3+", "v1.2.3", "1.2.x", ""]
)
def test_semver_rejects_invalid(bad):
    assert not semver.is_valid(bad)
