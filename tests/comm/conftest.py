"""Thin fixtures over hil/services/mosquitto.py and hil/services/csms.py for the comm tests."""

import itertools
import os

import pytest

from agent.frontends.mqtt_channel import MqttChannel
from hil.services.mosquitto import MessageLog, mosquitto

_ids = itertools.count(1)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A plain, anonymous mosquitto shared by the session (tests use distinct device ids)."""
    with mosquitto(str(tmp_path_factory.mktemp("mosquitto-plain"))) as b:
        yield b


@pytest.fixture(scope="session")
def tls_broker(tmp_path_factory):
    """Mosquitto with client certificates (CN = MQTT username) and a per-device ACL."""
    with mosquitto(str(tmp_path_factory.mktemp("mosquitto-tls")), tls=True) as b:
        yield b


@pytest.fixture
def own_broker(tmp_path):
    """A broker this test may stop and restart."""
    with mosquitto(str(tmp_path / "mosquitto")) as b:
        yield b


@pytest.fixture
def device_id():
    return "dev-%d-%d" % (os.getpid(), next(_ids))


@pytest.fixture
def channels():
    """make(settings, device_id, **kw) -> started MqttChannel; all stopped at teardown."""
    made = []

    def make(settings, device_id, connect=True, **kw):
        channel = MqttChannel(settings, device_id, **kw)
        made.append(channel)
        if connect:
            channel.connect(timeout=10)
        return channel

    yield make
    for channel in made:
        channel.stop()


@pytest.fixture
def message_log():
    return MessageLog()
