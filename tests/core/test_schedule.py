"""When a job may run: not-before, install-at, local windows across midnight, jitter, session."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import schedule
from agent.core.jobs import parse_job

DAY = 86400
T0 = 1767225600  # 2026-01-01T00:00:00Z
CET = 3600


def job(**fields):
    doc = {"id": "j", "url": "https://fw/x", "version": "2"}
    doc.update(fields)
    return parse_job(json.dumps(doc).encode(), {"model": "m"})


def at(hh, mm=0, day=0, offset=0):
    """Epoch seconds of local hh:mm on day `day` after T0's local date."""
    return T0 + day * DAY + hh * 3600 + mm * 60 - offset


def test_no_constraints_goes_at_once():
    assert schedule.decide(T0, 0, job(), False, 0.3) == ("go",)


def test_install_waits_for_install_at_plus_jitter():
    j = job(installDateTime=T0 + 600, jitter_s=1000)
    assert schedule.decide(T0, 0, j, False, 0.5) == ("wait", T0 + 1100, schedule.WAIT_INSTALL_AT)
    assert schedule.decide(T0 + 1100, 0, j, False, 0.5) == ("go",)


def test_download_waits_for_not_before_and_is_spread_by_jitter():
    j = job(not_before=T0 + 60, jitter_s=100)
    answer = schedule.decide(T0, 0, j, True, 0.25, schedule.DOWNLOAD)
    assert answer == ("wait", T0 + 85, schedule.WAIT_NOT_BEFORE)
    # A charging session does not hold back a download, only an install.
    assert schedule.decide(T0 + 85, 0, j, True, 0.25, schedule.DOWNLOAD) == ("go",)


def test_window_in_local_time_not_utc():
    j = job(window={"start": "02:00", "end": "04:00"})
    # 01:30 UTC is 02:30 in CET: inside the window.
    assert schedule.decide(at(1, 30), CET, j, False, 0) == ("go",)
    assert schedule.decide(at(1, 30), 0, j, False, 0) == ("wait", at(2), schedule.WAIT_WINDOW)


def test_window_crossing_midnight_is_open_on_both_sides():
    j = job(window={"start": "22:00", "end": "03:00"})
    for hh in (22, 23, 0, 1, 2):
        assert schedule.decide(at(hh, 30, 1, CET), CET, j, False, 0) == ("go",), hh
    assert schedule.decide(at(3, 0, 1, CET), CET, j, False, 0) == (
        "wait", at(22, 0, 1, CET), schedule.WAIT_WINDOW,
    )  # fmt: skip


def test_jitter_spreads_starts_inside_the_window_and_never_past_its_end():
    j = job(window={"start": "01:00", "end": "02:00"}, jitter_s=7200)
    assert schedule.decide(at(0), 0, j, False, 0.25) == ("wait", at(1, 30), schedule.WAIT_WINDOW)
    until = schedule.decide(at(0), 0, j, False, 0.99)[1]
    assert at(1) <= until < at(2)


def test_active_session_defers_while_window_open_then_waits_for_next_day():
    j = job(window={"start": "01:00", "end": "02:00"})
    answer = schedule.decide(at(1, 58), 0, j, True, 0)
    assert answer == ("wait", at(2), schedule.WAIT_SESSION)  # looks again at the latest by close
    assert schedule.decide(at(1, 0), 0, j, True, 0)[1] == at(1, 5)
    assert schedule.decide(at(2), 0, j, True, 0) == ("wait", at(1, 0, 1), schedule.WAIT_WINDOW)
    assert schedule.decide(at(1, 0, 1), 0, j, False, 0) == ("go",)


def test_deadline_passed_is_expired():
    j = job(deadline=T0 + 10, window={"start": "05:00", "end": "06:00"})
    assert schedule.decide(T0 + 10, 0, j, False, 0) == ("expired",)
    # The next window opens after the deadline: expired already.
    assert schedule.decide(T0, 0, j, False, 0) == ("expired",)


windows = st.tuples(st.integers(0, 1439), st.integers(0, 1439)).filter(lambda w: w[0] != w[1])


@settings(max_examples=400, deadline=None)
@given(
    windows,
    st.integers(-12 * 3600, 14 * 3600),
    st.integers(0, 3 * DAY),
    st.booleans(),
    st.floats(0, 1, exclude_max=True),
    st.integers(0, 4 * 3600),
)
def test_go_only_inside_window_and_never_during_a_session(w, offset, t, session, rng, jitter):
    doc = {"start": "%02d:%02d" % divmod(w[0], 60), "end": "%02d:%02d" % divmod(w[1], 60)}
    j = job(window=doc, jitter_s=jitter)
    now = T0 + t
    answer = schedule.decide(now, offset, j, session, rng)
    minute = ((now + offset) // 60) % 1440
    inside = (w[0] <= minute < w[1]) if w[0] < w[1] else (minute >= w[0] or minute < w[1])
    if answer == ("go",):
        assert inside and not session
    else:
        assert answer[0] == "wait" and answer[1] > now
        if not session:  # waiting ends at a moment that is itself inside the window
            assert schedule.in_window(answer[1], offset, j.window)


def test_unknown_phase_is_a_programming_error():
    with pytest.raises(ValueError):
        schedule.decide(T0, 0, job(), False, 0, phase="reboot")
