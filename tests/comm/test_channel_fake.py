"""The broker-free half of the channel: decoding rules, topic matching, FakeChannel."""

import pytest

from agent.core.errors import BrokerUnavailable, ConfigError
from agent.frontends import channel as ch
from hil.services.mosquitto import MessageLog


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"x" * (ch.DEFAULTS["max_message_bytes"] + 1), ch.OVERSIZED),
        (b"\xc3\x28", ch.NOT_UTF8),
        (b"{nope}", ch.MALFORMED_JSON),
        (b"", ch.MALFORMED_JSON),
        (b"42", ch.NOT_OBJECT),
        (b"null", ch.NOT_OBJECT),
    ],
)
def test_decode_rejects_with_reason(raw, reason):
    with pytest.raises(ch.MessageError) as err:
        ch.decode_payload(raw, ch.DEFAULTS["max_message_bytes"])
    assert err.value.reason == reason


def test_decode_accepts_object_at_exact_limit():
    raw = b'{"a":"' + b"x" * 100 + b'"}'
    assert ch.decode_payload(raw, len(raw)) == {"a": "x" * 100}


@pytest.mark.parametrize(
    "topic_filter, topic, expected",
    [
        ("chargers/+/backend/ping", "chargers/cp1/backend/ping", True),
        ("chargers/+/backend/ping", "chargers/cp1/backend/pong", False),
        ("chargers/#", "chargers/cp1/update/job", True),
        ("chargers/cp1/update/job", "chargers/cp1/update/job/x", False),
        ("chargers/+/update", "chargers/cp1/update/job", False),
    ],
)
def test_topic_matches(topic_filter, topic, expected):
    assert ch.topic_matches(topic_filter, topic) is expected


def test_unknown_protocol_is_config_error():
    with pytest.raises(ConfigError):
        ch.FakeChannel({"protocol": "4"})


def test_fake_records_publishes_and_delivers_injected_jobs():
    jobs, errors = MessageLog(), MessageLog()
    fake = ch.FakeChannel({"prefix": "p"}, "cp1", on_error=errors.on_error)
    fake.subscribe(ch.JOB, jobs)
    fake.connect()
    fake.inject(ch.JOB, {"job_id": "j1"})
    fake.inject(ch.JOB, b"not json")
    fake.publish(ch.STATUS, {"job_id": "j1", "seq": 1, "status": "Idle"})
    assert jobs.messages == [("p/cp1/update/job", {"job_id": "j1"})]
    assert [e[1] for e in errors.errors] == [ch.MALFORMED_JSON]
    assert fake.messages(ch.STATUS) == [{"job_id": "j1", "seq": 1, "status": "Idle"}]


def test_fake_ping_answered_only_while_connected():
    fake = ch.FakeChannel(device_id="cp1")
    fake.connect()
    assert fake.ping_backend(timeout=1)["nonce"]
    fake.set_connected(False)
    with pytest.raises(BrokerUnavailable):
        fake.ping_backend(timeout=0.05)
    with pytest.raises(BrokerUnavailable):
        fake.publish(ch.HEALTH, {}, qos=0)


def test_device_of_topic():
    fake = ch.FakeChannel({"prefix": "fleet/eu"}, "cp1")
    assert fake.device_of("fleet/eu/cp9/update/status") == "cp9"
    assert fake.device_of("other/cp9/update/status") is None


def test_deeply_nested_message_is_malformed_json_not_a_crash():
    """'[[[[...' nested past the parser's recursion (64 KiB allow it) raised RecursionError
    out of the channel's dispatch: never acknowledged, redelivered, raised again."""
    with pytest.raises(ch.MessageError) as err:
        ch.decode_payload(b'{"id": ' + b"[" * 20000, ch.DEFAULTS["max_message_bytes"])
    assert err.value.reason == ch.MALFORMED_JSON
