"""The journey table itself: closed sets, no duplicate rows, every state reachable and reported."""

import pytest

from agent.core import lifecycle as lc


def test_every_row_uses_known_states_and_events():
    # Flat tables (agent/core/lifecycle.py says why): a row short of a cell shifts the rest.
    assert len(lc.TRANSITIONS) % 3 == 0 and len(lc.RESUME) % 2 == 0 and len(lc.STATUS) % 2 == 0
    for src, ev, dst in lc.rows(lc.TRANSITIONS, 3):
        assert src in lc.STATES and dst in lc.STATES and ev in lc.EVENTS


def test_no_two_rows_for_the_same_state_and_event():
    keys = [(src, ev) for src, ev, _ in lc.rows(lc.TRANSITIONS, 3)]
    assert len(keys) == len(set(keys))


def test_every_state_has_a_status_and_a_resume_row():
    assert sorted(s for s, _ in lc.rows(lc.STATUS, 2)) == sorted(lc.STATES)
    assert sorted(s for s, _ in lc.rows(lc.RESUME, 2)) == sorted(lc.STATES)
    for _, to in lc.rows(lc.RESUME, 2):
        assert to in lc.STATES


def test_every_state_is_reachable_from_idle():
    seen, todo = {lc.IDLE}, [lc.IDLE]
    while todo:
        state = todo.pop()
        for src, _, dst in lc.rows(lc.TRANSITIONS, 3):
            if src == state and dst not in seen:
                seen.add(dst)
                todo.append(dst)
    assert seen == set(lc.STATES)


def test_every_terminal_state_leads_back_to_idle():
    for state in lc.TERMINAL:
        assert lc.next_state(state, lc.DONE) == lc.IDLE


def test_install_cannot_be_skipped_by_an_event_out_of_order():
    with pytest.raises(lc.IllegalTransition, match="downloaded"):
        lc.next_state(lc.DOWNLOADED, lc.INSTALL_OK)


def test_cancel_after_install_started_is_refused():
    for state in (lc.INSTALLING, lc.INSTALLED, lc.REBOOTING, lc.TRIAL):
        with pytest.raises(lc.IllegalTransition):
            lc.next_state(state, lc.CANCEL)


def test_unknown_state_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown state"):
        lc.next_state("flying", lc.DONE)


def test_status_names_are_the_documented_set():
    allowed = {
        "Downloading", "Downloaded", "DownloadFailed", "DownloadScheduled", "DownloadPaused",
        "SignatureVerified", "InvalidSignature", "InstallScheduled", "Installing",
        "InstallRebooting", "Installed", "InstallationFailed", "InstallVerificationFailed",
        "Idle", "TrialRunning", "Committed", "RolledBack",
    }  # fmt: skip
    assert {status for _, status in lc.rows(lc.STATUS, 2)} <= allowed
    assert lc.DOWNLOAD_PAUSED in allowed


def _name(value, pool):
    return [k for k, v in vars(lc).items() if k.isupper() and v == value and value in pool][0]


def test_docs_show_the_table_as_it_is():
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "lifecycle.md")
    with open(path) as f:
        doc = f.read()
    for src, ev, dst in lc.rows(lc.TRANSITIONS, 3):
        row = "| %s | %s | %s |" % (
            _name(src, lc.STATES), _name(ev, lc.EVENTS), _name(dst, lc.STATES),
        )  # fmt: skip
        assert row in doc, row
    for state, status in lc.rows(lc.STATUS, 2):
        assert "| %s | %s |" % (_name(state, lc.STATES), status) in doc
    for saved, to in lc.rows(lc.RESUME, 2):
        assert "| %s | %s |" % (_name(saved, lc.STATES), _name(to, lc.STATES)) in doc
