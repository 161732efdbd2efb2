"""TLS with client certificates and the per-device ACL, on a real mosquitto.

Attacks defended: a client without a certificate, with a certificate from another CA, or
talking plain TCP is refused; a device cannot publish on, or read, another device's topics.
"""

import os

import pytest

from agent.core.errors import BrokerUnavailable, ConfigError
from agent.frontends import channel as ch
from hil.services.mosquitto import BACKEND_IDENTITY, MessageLog, Pki


def tls_settings(broker, cn, protocol="5", **extra):
    return broker.settings(tls=broker.pki.tls_settings(cn), protocol=protocol, **extra)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_client_certificate_connects_and_identity_is_device_id(
    tls_broker, channels, device_id, protocol
):
    seen = MessageLog()
    backend = channels(
        tls_settings(tls_broker, BACKEND_IDENTITY, protocol),
        BACKEND_IDENTITY,
        will=False,
        client_id="backend-" + device_id,
    )
    backend.subscribe_filter("chargers/%s/update/#" % device_id, seen)
    assert backend.wait_subscribed(10)
    device = channels(tls_settings(tls_broker, device_id, protocol), device_id)
    device.publish(ch.STATUS, {"job_id": "t", "seq": 1, "status": "Idle"})
    seen.wait_for(lambda t, p: t.endswith("/update/status") and p.get("seq") == 1)
    seen.wait_for(lambda t, p: t.endswith("/update/online") and p.get("online") is True)


def assert_tls_refusal(message, alert):
    """With TLS 1.3 the server refuses the client certificate after the client's side of the
    handshake is done; if the client's first write races the server's close, the alert name
    is lost and only the reset is seen (CPython's own test_ssl accepts the same)."""
    assert alert in message or "104" in message or "32" in message or "reset" in message, message


def test_no_client_certificate_refused(tls_broker, channels, device_id):
    settings = tls_broker.settings(tls={"ca_file": tls_broker.pki.ca_file}, reconnect_max_s=1)
    device = channels(settings, device_id, connect=False)
    with pytest.raises(BrokerUnavailable) as err:
        device.connect(timeout=10)
    assert_tls_refusal(str(err.value), "CERTIFICATE_REQUIRED")
    assert not device.connected


def test_certificate_from_foreign_ca_refused(tls_broker, channels, device_id):
    cert_file, key_file = tls_broker.pki.rogue_client(device_id)
    tls = {"ca_file": tls_broker.pki.ca_file, "cert_file": cert_file, "key_file": key_file}
    device = channels(tls_broker.settings(tls=tls), device_id, connect=False)
    with pytest.raises(BrokerUnavailable) as err:
        device.connect(timeout=10)
    assert_tls_refusal(str(err.value), "UNKNOWN_CA")
    assert not device.connected


def test_broker_with_untrusted_server_certificate_refused(
    tls_broker, channels, device_id, tmp_path
):
    other = Pki(str(tmp_path / "other-pki"))  # the device trusts a different CA
    tls = dict(tls_broker.pki.tls_settings(device_id), ca_file=other.ca_file)
    device = channels(tls_broker.settings(tls=tls), device_id, connect=False)
    with pytest.raises(BrokerUnavailable) as err:
        device.connect(timeout=10)
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_plain_tcp_to_tls_listener_refused(tls_broker, channels, device_id):
    device = channels(tls_broker.settings(), device_id, connect=False)
    with pytest.raises(BrokerUnavailable):
        device.connect(timeout=10)


def test_missing_certificate_file_is_config_error_not_retried(tls_broker, channels, device_id):
    tls = dict(tls_broker.pki.tls_settings(device_id), cert_file="/nonexistent/dev.crt")
    device = channels(tls_broker.settings(tls=tls), device_id, connect=False)
    with pytest.raises(ConfigError) as err:
        device.connect(timeout=10)
    assert "cert_file" in str(err.value)


def _pair(tls_broker, channels, device_id, protocol):
    """Devices A and B plus a backend that watches everything below chargers/."""
    seen = MessageLog()
    backend = channels(
        tls_settings(tls_broker, BACKEND_IDENTITY, protocol),
        BACKEND_IDENTITY,
        will=False,
        client_id="backend-" + device_id,
    )
    backend.subscribe_filter("chargers/#", seen)
    assert backend.wait_subscribed(10)
    a_id, b_id = device_id + "-a", device_id + "-b"
    a = channels(tls_settings(tls_broker, a_id, protocol), a_id)
    return seen, backend, a, b_id


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_device_cannot_publish_status_for_another_device(tls_broker, channels, device_id, protocol):
    seen, _, a, b_id = _pair(tls_broker, channels, device_id, protocol)
    forged = {"job_id": "j", "seq": 99, "status": "Committed", "forged": True}
    a.publish_to(a.topic(ch.STATUS, b_id), forged)
    a.publish_to(a.topic(ch.INVENTORY, b_id), forged, retain=True)
    # Same connection, same order: once the marker is through, the forgeries were handled.
    a.publish(ch.STATUS, {"marker": True})
    seen.wait_for(lambda t, p: p.get("marker") is True)
    assert [m for m in seen.messages if "/%s/" % b_id in m[0]] == []
    assert not any(p.get("forged") for _, p in seen.messages)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_device_cannot_read_another_devices_jobs(tls_broker, channels, device_id, protocol):
    seen, backend, a, b_id = _pair(tls_broker, channels, device_id, protocol)
    stolen = MessageLog()
    a.subscribe_filter(a.topic(ch.JOB, b_id), stolen)
    a.subscribe(ch.JOB, stolen)
    assert a.wait_subscribed(10)
    backend.publish_to(backend.topic(ch.JOB, b_id), {"job_id": "for-b", "url": "secret"})
    backend.publish_to(backend.topic(ch.JOB, a.device_id), {"job_id": "marker"})
    stolen.wait_for(lambda t, p: p.get("job_id") == "marker")
    assert [p["job_id"] for _, p in stolen.messages] == ["marker"]


def test_acl_file_is_the_documented_pattern(tls_broker):
    with open(os.path.join(tls_broker.directory, "acl")) as f:
        text = f.read()
    assert "pattern readwrite chargers/%u/#" in text
    assert "user backend\ntopic readwrite chargers/#" in text
