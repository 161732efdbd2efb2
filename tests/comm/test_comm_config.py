"""[mqtt] and [ocpp] sections of the agent's TOML config -> channel settings / probe args."""

import pytest

from agent.config import load
from agent.core.errors import ConfigError
from agent.frontends import channel as ch
from agent.station.ocpp_probe import probe_args_from_config

BASE = """
[device]
id = "cp-0042"
model = "AC22"
hardware_revision = "C"
[slots.A]
rootfs = "a.img"
[slots.B]
rootfs = "b.img"
[bootloader]
backend = "sim"
"""


def write(tmp_path, extra):
    path = tmp_path / "agent.toml"
    path.write_text(BASE + extra)
    return load(str(path))


def test_mqtt_settings_resolve_tls_paths_relative_to_config(tmp_path):
    config = write(
        tmp_path,
        '[mqtt]\nport = 8883\nprotocol = "3.1.1"\n'
        '[mqtt.tls]\nca_file = "pki/ca.crt"\ncert_file = "/abs/dev.crt"\n',
    )
    settings, device_id = ch.settings_from_config(config)
    assert device_id == "cp-0042"
    assert settings["port"] == 8883 and settings["protocol"] == "3.1.1"
    assert settings["tls"]["ca_file"] == str(tmp_path / "pki" / "ca.crt")
    assert settings["tls"]["cert_file"] == "/abs/dev.crt"
    assert settings["max_message_bytes"] == 64 * 1024


def test_mqtt_typo_is_config_error(tmp_path):
    config = write(tmp_path, '[mqtt]\nhots = "x"\n')
    with pytest.raises(ConfigError) as err:
        ch.settings_from_config(config)
    assert "hots" in str(err.value)


def test_ocpp_section_gives_probe_args(tmp_path):
    config = write(tmp_path, '[ocpp]\nurl = "ws://127.0.0.1:9000/ocpp"\ntimeout_s = 3\n')
    args = probe_args_from_config(config)
    assert args["charge_point_id"] == "cp-0042" and args["timeout"] == 3.0
    assert args["model"] == "AC22"


def test_no_ocpp_section_means_no_probe(tmp_path):
    assert probe_args_from_config(write(tmp_path, "")) is None


def test_ocpp_http_url_is_config_error(tmp_path):
    with pytest.raises(ConfigError):
        probe_args_from_config(write(tmp_path, '[ocpp]\nurl = "http://csms/ocpp"\n'))


def test_probe_args_drive_a_real_probe(tmp_path):
    from agent.station.ocpp_probe import probe
    from hil.services.csms import csms

    with csms() as server:
        config = write(tmp_path, '[ocpp]\nurl = "%s"\n' % server.url)
        evidence = probe(**probe_args_from_config(config))
    assert evidence["ok"] and server.boots[0]["id"] == "cp-0042"
    assert server.boots[0]["station"]["model"] == "AC22"
