"""MqttChannel against a real mosquitto: round trips, retained online + last will, bad input,
reconnect after a broker restart."""

import json

import pytest

from agent.core.errors import BrokerUnavailable
from agent.frontends import channel as ch
from hil.services.mosquitto import MessageLog, free_port

PROTOCOLS = ["5", "3.1.1"]


def _is(topic_end, **fields):
    def pred(topic, payload):
        return topic.endswith(topic_end) and all(payload.get(k) == v for k, v in fields.items())

    return pred


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_job_in_status_out_round_trip(broker, channels, device_id, message_log, protocol):
    settings = broker.settings(protocol=protocol)
    jobs = MessageLog()
    device = channels(settings, device_id)
    device.subscribe(ch.JOB, jobs)
    backend = channels(settings, "backend-" + device_id, will=False)
    backend.subscribe_filter("chargers/+/update/status", message_log)
    assert device.wait_subscribed(10) and backend.wait_subscribed(10)

    backend.publish_to(backend.topic(ch.JOB, device_id), {"job_id": "j1", "version": "1.1.0"})
    topic, job = jobs.wait_for(_is("/update/job", job_id="j1"))
    assert topic == "chargers/%s/update/job" % device_id
    device.publish(ch.STATUS, {"job_id": "j1", "seq": 1, "status": "Downloading"})
    topic, status = message_log.wait_for(_is("/update/status", job_id="j1"))
    assert topic == "chargers/%s/update/status" % device_id
    assert status == {"job_id": "j1", "seq": 1, "status": "Downloading"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retained_online_then_last_will_on_abrupt_loss(broker, channels, device_id, protocol):
    settings = broker.settings(protocol=protocol)
    device = channels(settings, device_id, online_info={"version": "1.0.0"})
    seen = MessageLog()
    # Subscribing after the device connected: only a retained message can arrive.
    observer = channels(settings, "obs-" + device_id, will=False)
    observer.subscribe_filter(device.topic(ch.ONLINE), seen)
    _, online = seen.wait_for(_is("/update/online", online=True))
    assert online["device_id"] == device_id and online["version"] == "1.0.0"

    device.abort()  # socket closed without DISCONNECT, as in a power cut
    _, offline = seen.wait_for(_is("/update/online", online=False))
    assert offline == {"device_id": device_id, "online": False}


def test_clean_stop_publishes_offline(broker, channels, device_id, message_log):
    device = channels(broker.settings(), device_id)
    observer = channels(broker.settings(), "obs-" + device_id, will=False)
    observer.subscribe_filter(device.topic(ch.ONLINE), message_log)
    message_log.wait_for(_is("/update/online", online=True))
    device.stop()
    _, offline = message_log.wait_for(_is("/update/online", online=False))
    assert offline["device_id"] == device_id


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{" * 10 + b"x" * (64 * 1024), ch.OVERSIZED),
        (b'{"job_id": "j1", ', ch.MALFORMED_JSON),
        (b"\xff\xfe\x00garbage", ch.NOT_UTF8),
        (b'["job", 1]', ch.NOT_OBJECT),
    ],
    ids=["oversized", "truncated-json", "not-utf8", "json-array"],
)
def test_hostile_job_message_reported_and_channel_keeps_working(
    broker, channels, device_id, message_log, raw, reason
):
    device = channels(broker.settings(), device_id, on_error=message_log.on_error)
    device.subscribe(ch.JOB, message_log)
    assert device.wait_subscribed(10)
    sender = channels(broker.settings(), "backend-" + device_id, will=False)
    sender.publish_raw(device.topic(ch.JOB), raw, qos=1, wait_s=5)

    topic, got_reason, detail = message_log.wait_error(reason)
    assert topic == device.topic(ch.JOB) and detail
    # The channel still delivers good jobs afterwards, and the bad one never reached a handler.
    sender.publish_to(device.topic(ch.JOB), {"job_id": "after"})
    message_log.wait_for(_is("/update/job", job_id="after"))
    assert [p for _, p in message_log.messages] == [{"job_id": "after"}]


def test_handler_exception_reported_not_raised_in_network_thread(
    broker, channels, device_id, message_log
):
    def broken(topic, payload):
        raise KeyError("version")

    device = channels(broker.settings(), device_id, on_error=message_log.on_error)
    device.subscribe(ch.JOB, broken)
    device.subscribe(ch.CANCEL, message_log)
    assert device.wait_subscribed(10)
    device.publish(ch.JOB, {"job_id": "x"})
    _, _, detail = message_log.wait_error(ch.HANDLER_FAILED)
    assert "KeyError" in detail
    device.publish(ch.CANCEL, {"job_id": "x"})
    message_log.wait_for(_is("/update/cancel", job_id="x"))


def test_reconnects_and_resubscribes_after_broker_restart(own_broker, channels, device_id):
    settings = own_broker.settings(reconnect_min_s=0.1, reconnect_max_s=0.5)
    jobs = MessageLog()
    device = channels(settings, device_id)
    device.subscribe(ch.JOB, jobs)
    assert device.wait_connections(1, 10)

    own_broker.kill()
    own_broker.start()  # same port, empty state: subscriptions must be re-sent by us
    assert device.wait_connections(2, 20), device.last_error
    assert device.wait_subscribed(10)
    sender = channels(settings, "backend-" + device_id, will=False)
    sender.publish_to(device.topic(ch.JOB), {"job_id": "after-restart"})
    jobs.wait_for(_is("/update/job", job_id="after-restart"))


def test_retained_inventory_published_while_broker_down_arrives_after_reconnect(
    own_broker, channels, device_id, message_log
):
    settings = own_broker.settings(reconnect_min_s=0.1, reconnect_max_s=0.5)
    device = channels(settings, device_id)
    own_broker.kill()
    assert device.wait_disconnected(10)
    # QoS 1 is queued by the channel while offline; QoS 0 cannot be and says so.
    device.publish(ch.INVENTORY, {"booted": "B", "seq": 7}, qos=1, retain=True)
    with pytest.raises(BrokerUnavailable):
        device.publish(ch.HEALTH, {"x": 1}, qos=0)
    own_broker.start()
    assert device.wait_connections(2, 20), device.last_error
    observer = channels(settings, "obs-" + device_id, will=False)
    observer.subscribe_filter(device.topic(ch.INVENTORY), message_log)
    _, inventory = message_log.wait_for(_is("/update/inventory", seq=7))
    assert inventory["booted"] == "B"


def test_connect_to_closed_port_raises_broker_unavailable(channels, device_id):
    settings = {"host": "127.0.0.1", "port": free_port(), "reconnect_max_s": 1}
    device = channels(settings, device_id, connect=False)
    with pytest.raises(BrokerUnavailable) as err:
        device.connect(timeout=10)
    assert "ConnectionRefusedError" in str(err.value)


def test_messages_are_compact_sorted_json(broker, channels, device_id, message_log):
    device = channels(broker.settings(), device_id)
    raw_seen = []
    observer = channels(broker.settings(), "obs-" + device_id, will=False)
    observer.subscribe_filter(device.topic(ch.HEALTH), message_log)
    assert observer.wait_subscribed(10)
    device.publish(ch.HEALTH, {"b": 1, "a": [1, 2]})
    _, payload = message_log.wait_for(_is("/update/health"))
    raw_seen.append(ch.encode_payload(payload))
    assert raw_seen == [b'{"a":[1,2],"b":1}']
    assert json.loads(raw_seen[0]) == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_job_sent_while_device_offline_delivered_on_return(broker, channels, device_id, protocol):
    settings = broker.settings(protocol=protocol)
    first = channels(settings, device_id)
    first.subscribe(ch.JOB, MessageLog())
    assert first.wait_subscribed(10)
    first.stop()  # the charger reboots; its session stays on the broker

    backend = channels(settings, "backend-" + device_id, will=False)
    backend.publish_to(backend.topic(ch.JOB, device_id), {"job_id": "queued"}, wait_s=10)

    jobs = MessageLog()
    again = channels(settings, device_id, connect=False)
    again.subscribe(ch.JOB, jobs)
    again.connect(10)
    jobs.wait_for(_is("/update/job", job_id="queued"))


DEVICE_PROCESS = """
import sys, threading
from agent.frontends.mqtt_channel import MqttChannel
channel = MqttChannel({"host": "127.0.0.1", "port": int(sys.argv[1])}, sys.argv[2])
channel.connect(10)
print("connected", flush=True)
threading.Event().wait()
"""


def test_last_will_when_device_process_is_killed(broker, channels, device_id, message_log):
    import subprocess
    import sys

    observer = channels(broker.settings(), "obs-" + device_id, will=False)
    observer.subscribe_filter("chargers/%s/update/online" % device_id, message_log)
    assert observer.wait_subscribed(10)
    proc = subprocess.Popen(
        [sys.executable, "-c", DEVICE_PROCESS, str(broker.port), device_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "connected"
        message_log.wait_for(_is("/update/online", online=True))
        proc.kill()  # power cut: no DISCONNECT, no offline publish of our own
        proc.wait()
        _, offline = message_log.wait_for(_is("/update/online", online=False))
        assert offline == {"device_id": device_id, "online": False}  # the will, not a stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ping_during_broker_outage_fails_with_link_state(own_broker, channels, device_id):
    settings = own_broker.settings(reconnect_min_s=0.1, reconnect_max_s=0.5)
    device = channels(settings, device_id)
    own_broker.kill()
    assert device.wait_disconnected(10)
    with pytest.raises(BrokerUnavailable) as err:
        device.ping_backend(timeout=0.3)
    assert "broker link down" in str(err.value)
