"""Jobs from a local front-end: the engine options they may carry, and that the MQTT wire
never reaches them."""

import json

import pytest

from agent.core.errors import MalformedJob
from agent.core.jobs import EXTENDED, job_from_dict, job_from_request, parse_job

DEVICE = {"model": "acme-ac22"}
BASE = {"id": "ocpp-7-1", "url": "https://fw.example/a.cub", "version": "unknown"}


def test_engine_options_round_trip_through_the_journal():
    doc = dict(BASE, signature="c2ln", signing_certificate="-----BEGIN CERTIFICATE-----",
               retry_interval_s=30, hold_until_allowed=True, block_new_sessions=True,
               download_waits_for_sessions=True, write_during_sessions=True)  # fmt: skip
    job = job_from_request(doc, DEVICE)
    assert job.retry_interval_s == 30 and job.hold_until_allowed and job.write_during_sessions
    assert job_from_dict(job.to_dict()) == job


def test_mqtt_wire_never_sets_engine_options():
    doc = dict(BASE, hold_until_allowed=True, signature="c2ln", signing_certificate="x")
    job = parse_job(json.dumps(doc).encode(), DEVICE)
    for name, default in EXTENDED.items():
        assert getattr(job, name) == default
    assert set(job.to_dict()) & set(EXTENDED) == set()  # MQTT job records are unchanged


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"signature": "c2ln"}, "come together"),
        ({"signature": "", "signing_certificate": "x"}, "signature"),
        ({"signature": "x" * 5000, "signing_certificate": "x"}, "signature"),
        ({"retry_interval_s": -1}, "retry_interval_s"),
        ({"retry_interval_s": True}, "retry_interval_s"),
        ({"hold_until_allowed": "yes"}, "hold_until_allowed"),
    ],
)
def test_bad_engine_options_are_malformed(extra, field):
    with pytest.raises(MalformedJob, match=field):
        job_from_request(dict(BASE, **extra), DEVICE)


def test_front_end_job_may_name_no_version():
    job = job_from_request({"id": "ocpp-1-a", "url": "https://fw.example/x"}, DEVICE)
    assert job.version is None
    assert job_from_dict(job.to_dict()) == job
    with pytest.raises(MalformedJob, match="version"):
        parse_job(json.dumps({"id": "j", "url": "https://fw.example/x"}).encode(), DEVICE)
