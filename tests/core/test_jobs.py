"""Job messages from the control plane: validation, size bound, model, replay memory."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.errors import MalformedJob, WrongModel
from agent.core.jobs import JobMemory, job_from_dict, job_id_of, parse_job, rfc3339_to_epoch

DEVICE = {"model": "acme-ac22"}


def raw(**fields):
    doc = {"id": "job-1", "url": "https://fw.example/a.bundle", "version": "2.0"}
    doc.update(fields)
    return json.dumps(doc).encode()


def test_full_job_parses_every_field():
    job = parse_job(
        raw(
            retrieveDateTime="2026-01-01T10:00:00Z",
            installDateTime="2026-01-01T12:30:00+01:00",
            window={"start": "22:00", "end": "04:30"},
            jitter_s=900,
            retries=5,
            checks=["communication"],
            trial_window_s=300,
            models=["acme-ac22", "acme-ac11"],
        ),
        DEVICE,
    )
    assert job.not_before == 1767261600
    assert job.install_at == 1767267000
    assert job.window == (22 * 60, 4 * 60 + 30)
    assert (job.jitter_s, job.retries, job.checks, job.trial_window_s) == (
        900, 5, ["communication"], 300,
    )  # fmt: skip


def test_job_survives_the_journal_round_trip():
    job = parse_job(raw(window={"start": "01:00", "end": "02:00"}, not_before=5), DEVICE)
    assert job_from_dict(json.loads(json.dumps(job.to_dict()))) == job


CONFIGURED = ["alarms", "charging-session", "communication", "acme.checks:Contactor"]


@pytest.mark.parametrize("name", ["os:abort", "sched:scheduler", "acme.checks:Other", "nope"])
def test_job_check_not_configured_is_malformed_job(name):
    """A job names code to import, or a check the charger does not have: refused, by name."""
    with pytest.raises(MalformedJob, match="names '%s'" % name):
        parse_job(raw(checks=["communication", name]), DEVICE, checks=CONFIGURED)


def test_job_may_name_configured_checks_even_code_the_config_loads():
    job = parse_job(raw(checks=["acme.checks:Contactor", "alarms"]), DEVICE, checks=CONFIGURED)
    assert job.checks == ["acme.checks:Contactor", "alarms"]


def test_job_check_name_with_terminal_escapes_is_quoted_in_the_refusal():
    with pytest.raises(MalformedJob) as e:
        parse_job(raw(checks=["\x1b[2Jx"]), DEVICE, checks=CONFIGURED)
    assert "\x1b" not in e.value.message and "\\x1b[2Jx" in e.value.message


@pytest.mark.parametrize("key", ["id", "job_id", "requestId"])
def test_malformed_job_keeps_the_id_under_every_documented_key(key):
    assert job_id_of({key: "J-ftp", "url": "ftp://x/b"}) == "J-ftp"
    assert job_id_of({key: 7}) == ("7" if key == "requestId" else None)
    assert job_id_of({key: ""}) is None and job_id_of([key]) is None


def test_oversized_job_is_rejected_before_parsing():
    with pytest.raises(MalformedJob, match="limit is 100"):
        parse_job(raw(pad="x" * 200), DEVICE, {"max_job_bytes": 100})


def test_job_for_another_model_is_rejected_with_a_reason():
    with pytest.raises(WrongModel, match="acme-dc50.*this charger is acme-ac22"):
        parse_job(raw(model="acme-dc50"), DEVICE)


@pytest.mark.parametrize(
    "fields, fault",
    [
        ({"id": None}, "'id' is missing"),
        ({"id": ""}, "'id' must be a non-empty string"),
        ({"url": "ftp://x"}, "'url' must be"),
        ({"version": 2}, "'version' must be"),
        ({"retries": -1}, "'retries' must be an integer"),
        ({"retries": True}, "'retries' must be an integer"),
        ({"jitter_s": "10"}, "'jitter_s' must be an integer"),
        ({"window": {"start": "25:00", "end": "02:00"}}, "HH:MM"),
        ({"window": {"start": "02:00", "end": "02:00"}}, "empty"),
        ({"window": "nightly"}, "'window' must be"),
        ({"retrieveDateTime": "tomorrow"}, "not an RFC 3339 time"),
        ({"installDateTime": -5}, "must not be negative"),
        ({"checks": "all"}, "'checks' must be a list"),
        ({"models": []}, "'models' must be a non-empty list"),
    ],
)
def test_bad_field_is_named_in_the_error(fields, fault):
    with pytest.raises(MalformedJob, match=fault):
        parse_job(raw(**fields), DEVICE)


@pytest.mark.parametrize("message", [b"", b"\xff\xfe", b"[1, 2]", b"null", b"{", b'"job"'])
def test_message_that_is_not_a_json_object_is_malformed(message):
    with pytest.raises(MalformedJob):
        parse_job(message, DEVICE)


def test_deeply_nested_json_bomb_is_malformed_not_a_crash():
    with pytest.raises(MalformedJob, match="not UTF-8 JSON"):
        parse_job(b"[" * 5000, DEVICE)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_give_a_job_or_malformed_never_a_crash(data):
    try:
        parse_job(data, DEVICE)
    except MalformedJob:
        pass


def containers(inner):
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8), containers, max_leaves=8
)
fields = st.sampled_from(
    ["id", "url", "version", "window", "retries", "jitter_s", "installDateTime", "checks",
     "retrieveDateTime", "models", "model", "trial_window_s", "requestId", "location"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(fields, json_values, max_size=6))
def test_any_json_object_gives_a_job_or_a_clear_rejection(doc):
    try:
        parse_job(json.dumps(doc).encode(), DEVICE)
    except (MalformedJob, WrongModel) as e:
        assert str(e)


def test_rfc3339_offsets_and_fractions():
    assert rfc3339_to_epoch("1970-01-01T00:00:00Z") == 0
    assert rfc3339_to_epoch("2000-02-29T23:59:59.123Z") == 951868799
    assert rfc3339_to_epoch("2026-01-01T01:00:00+01:00") == rfc3339_to_epoch("2026-01-01T00:00:00Z")
    for bad in ("2026-13-01T00:00:00Z", "2026-01-01T00:00:00", "2026-01-01T00:00:00+0100"):
        assert rfc3339_to_epoch(bad) is None


def test_replayed_job_id_is_remembered_across_the_journal():
    memory = JobMemory(limit=3)
    for job_id in ("a", "b", "c", "d"):
        memory.remember(job_id)
    restored = JobMemory.from_list(json.loads(json.dumps(memory.to_list())), limit=3)
    assert [restored.seen(i) for i in ("a", "b", "c", "d")] == [False, True, True, True]
    restored.remember("b")
    assert restored.to_list() == ["b", "c", "d"]


@pytest.mark.parametrize("field", ["deadline", "retrieve_at", "install_at"])
@pytest.mark.parametrize("digit", ["\u00b2", "\u0662", "\uff12"])
def test_job_time_with_a_unicode_digit_is_malformed_job(field, digit):
    """Found by fuzzing: '²'.isdigit() is true and int('²') raises ValueError, which escaped
    parse_job (the daemon reported an internal error). Arabic-Indic and fullwidth digits,
    which int() would take, are no time either."""
    raw = json.dumps({"id": "j", "url": "https://x/b.cub", "version": "1",
                      field: digit + "026-01-01T00:00:00Z"}).encode()  # fmt: skip
    with pytest.raises(MalformedJob, match="RFC 3339"):
        parse_job(raw, DEVICE)


def test_job_window_with_a_unicode_digit_is_malformed_job():
    raw = json.dumps({"id": "j", "url": "https://x/b.cub", "version": "1",
                      "window": {"start": "\u00b22:00", "end": "04:00"}}).encode()  # fmt: skip
    with pytest.raises(MalformedJob):
        parse_job(raw, DEVICE)
