"""The comm round trip (device ping -> backend pong) and the operator console, over a real
mosquitto, plain and with TLS client certificates + ACL."""

import threading

import pytest

from agent.core.errors import BrokerUnavailable
from agent.frontends import channel as ch
from agent.frontends.backend_sim import IDENTITY, BackendSim
from hil.services.mosquitto import MessageLog


@pytest.fixture
def backend(broker):
    with BackendSim(broker.settings()) as b:
        yield b


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_ping_answered_with_same_nonce(broker, channels, device_id, protocol):
    with BackendSim(broker.settings(protocol=protocol)) as backend:
        device = channels(broker.settings(protocol=protocol), device_id)
        evidence = device.ping_backend(timeout=10)
    assert (device_id, evidence["nonce"]) in backend.pings
    assert evidence["rtt_s"] >= 0
    assert device.stray_pongs == 0


def test_unanswered_ping_is_broker_unavailable(broker, channels, device_id, backend):
    backend.answer_pings = False
    device = channels(broker.settings(), device_id)
    with pytest.raises(BrokerUnavailable) as err:
        device.ping_backend(timeout=0.5)
    assert "did not answer" in str(err.value)
    backend.wait_ping(device_id, 10)  # the ping did reach the backend


def test_forged_pong_with_wrong_nonce_does_not_pass_comm_check(
    broker, channels, device_id, backend
):
    backend.answer_pings = False
    device = channels(broker.settings(), device_id)
    markers = MessageLog()
    device.subscribe(ch.CANCEL, markers)
    assert device.wait_subscribed(10)
    result = []
    worker = threading.Thread(target=lambda: result.append(device.ping_backend(timeout=20)))
    worker.start()
    backend.wait_ping(device_id, 10)
    nonce = [n for d, n in backend.pings if d == device_id][0]
    forge = backend.channel.publish_to
    forge(device.topic(ch.PONG), {"nonce": "0" * 16})
    forge(device.topic(ch.CANCEL), {"marker": 1})  # same connection: handled after the forgery
    markers.wait_for(lambda t, p: p.get("marker") == 1)
    assert device.stray_pongs == 1 and result == []
    forge(device.topic(ch.PONG), {"nonce": nonce})
    worker.join(20)
    assert result and result[0]["nonce"] == nonce


def test_publish_job_and_wait_status(broker, channels, device_id, backend):
    device = channels(broker.settings(), device_id)

    def on_job(topic, job):
        device.publish(ch.STATUS, {"job_id": job["job_id"], "seq": 1, "status": "Downloading"})

    device.subscribe(ch.JOB, on_job)
    assert device.wait_subscribed(10)
    job = backend.publish_job(device_id, {"version": "1.1.0", "url": "http://x/b"})
    assert job["job_id"]
    status = backend.wait_status(device_id, "Downloading", timeout=10)
    assert status["job_id"] == job["job_id"]
    assert backend.statuses(device_id) == [status]


def test_wait_status_timeout_lists_what_was_seen(broker, channels, device_id, backend):
    device = channels(broker.settings(), device_id)
    device.publish(ch.STATUS, {"job_id": "j", "seq": 1, "status": "Idle"})
    backend.wait_status(device_id, "Idle", timeout=10)
    with pytest.raises(TimeoutError) as err:
        backend.wait_status(device_id, "Committed", timeout=0.2)
    assert "Idle" in str(err.value)


def test_inventory_and_online_collected(broker, channels, device_id, backend):
    device = channels(broker.settings(), device_id)
    device.publish(ch.INVENTORY, {"booted": "A", "seq": 3}, retain=True)
    row = backend.wait_inventory(device_id, lambda r: r.get("seq") == 3, timeout=10)
    assert backend.inventory(device_id) == row
    backend.wait_for(ch.ONLINE, device_id, lambda p: p["online"] is True, timeout=10)


def test_ping_round_trip_over_tls_with_acl(tls_broker, channels, device_id):
    backend_settings = tls_broker.settings(tls=tls_broker.pki.tls_settings(IDENTITY))
    with BackendSim(backend_settings) as backend:
        tls = tls_broker.pki.tls_settings(device_id)
        device = channels(tls_broker.settings(tls=tls), device_id)
        evidence = device.ping_backend(timeout=10)
        assert (device_id, evidence["nonce"]) in backend.pings
