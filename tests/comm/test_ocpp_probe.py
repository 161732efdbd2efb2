"""The OCPP 2.0.1 probe against a real CSMS built on the `ocpp` package, on loopback."""

import asyncio

import pytest

from agent.core.errors import Transient
from agent.station.ocpp_probe import (
    PROTOCOL_ERROR,
    REFUSED,
    REJECTED,
    TIMEOUT,
    OcppProbeError,
    probe,
    probe_async,
)
from hil.services.csms import csms
from hil.services.mosquitto import free_port


def test_accepted_boot_and_heartbeat_pass_with_evidence():
    with csms() as server:
        evidence = probe(
            server.url,
            "cp-1",
            timeout=10,
            model="AC22",
            vendor_name="Acme",
            firmware_version="1.1.0",
        )
    assert evidence["ok"] is True
    assert evidence["boot_status"] == "Accepted" and evidence["subprotocol"] == "ocpp2.0.1"
    assert evidence["heartbeat_time"] and evidence["csms_time"]
    assert server.boot_reasons == ["FirmwareUpdate"]
    assert server.boots[0]["station"] == {
        "model": "AC22",
        "vendor_name": "Acme",
        "firmware_version": "1.1.0",
    }
    assert server.heartbeats == [{"id": "cp-1", "n": 0}]
    assert server.connections == [("cp-1", "ocpp2.0.1")]


@pytest.mark.parametrize("status", ["Rejected", "Pending"])
def test_boot_not_accepted_fails_as_rejected(status):
    with csms(boot_status=status) as server:
        with pytest.raises(OcppProbeError) as err:
            probe(server.url, "cp-2", timeout=10)
    assert err.value.ocpp_reason == REJECTED
    assert err.value.evidence["boot_status"] == status
    assert err.value.evidence["ok"] is False
    assert server.heartbeats == []  # a station not accepted must not carry on


def test_csms_call_error_fails_as_protocol_error():
    with csms(boot_status="CallError") as server:
        with pytest.raises(OcppProbeError) as err:
            probe(server.url, "cp-10", timeout=10)
    assert err.value.ocpp_reason == PROTOCOL_ERROR
    assert server.heartbeats == []


def test_csms_down_fails_as_refused():
    with pytest.raises(OcppProbeError) as err:
        probe("ws://127.0.0.1:%d/ocpp" % free_port(), "cp-3", timeout=5)
    assert err.value.ocpp_reason == REFUSED
    assert "Connect" in str(err.value) or "refused" in str(err.value).lower()
    assert isinstance(err.value, Transient)


def test_silent_csms_fails_as_timeout_not_hang():
    with csms(answer_heartbeat=False) as server:
        with pytest.raises(OcppProbeError) as err:
            probe(server.url, "cp-4", timeout=3.0)
    assert err.value.ocpp_reason == TIMEOUT
    assert "heartbeat" in str(err.value)
    assert err.value.evidence["boot_status"] == "Accepted"
    assert len(server.heartbeats) == 1


def test_server_without_ocpp201_subprotocol_fails_as_refused():
    with csms(subprotocols=()) as server:
        with pytest.raises(OcppProbeError) as err:
            probe(server.url, "cp-5", timeout=5)
    assert err.value.ocpp_reason == REFUSED
    assert "subprotocol" in str(err.value)
    assert server.boots == []


def test_ocpp16_only_csms_fails_as_refused():
    with csms(subprotocols=("ocpp1.6",)) as server:
        with pytest.raises(OcppProbeError) as err:
            probe(server.url, "cp-6", timeout=5)
    assert err.value.ocpp_reason == REFUSED
    assert server.boots == []


def test_non_websocket_peer_fails_as_refused(broker):
    # An MQTT broker is not a CSMS: the HTTP upgrade never succeeds.
    with pytest.raises(OcppProbeError) as err:
        probe("ws://127.0.0.1:%d/ocpp" % broker.port, "cp-7", timeout=3)
    assert err.value.ocpp_reason in (REFUSED, TIMEOUT)


def test_sync_probe_works_from_inside_a_running_event_loop():
    async def caller():
        return probe(server.url, "cp-8", timeout=10)

    with csms() as server:
        evidence = asyncio.run(caller())
    assert evidence["ok"] is True


def test_async_probe_on_callers_loop():
    with csms() as server:
        evidence = asyncio.run(probe_async(server.url, "cp-9", 10))
    assert evidence["boot_status"] == "Accepted"
    assert server.boot_reasons == ["FirmwareUpdate"]
