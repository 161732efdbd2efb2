"""What a CSMS may send that it should not: malformed and mistyped UpdateFirmware, frames that
are not OCPP, oversized messages, certificates the station does not know. Sent as raw frames
by the real CSMS on loopback to the virtual board's charging stack (OCPP 2.0.1), which hands
what passes its schema check to the agent. Each case gets one clear answer (a CALLERROR, a
refusal, or InvalidCertificate with its security event), starts no update, and leaves both
the stack and the agent serving: a ManufacturerRootCertificate query, which goes through the
stack to the agent and back, still works afterwards.
"""

import json

import pytest

from tests.ocpp.conftest import iso

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def c(station201):
    station201.begin()
    station201.console = len(station201.rig.console_text())
    yield station201
    # Every case: the stack and the agent still answer, no update started, no traceback.
    get = [2, "alive", "GetInstalledCertificateIds",
           {"certificateType": ["ManufacturerRootCertificate"]}]  # fmt: skip
    reply = station201.csms.send_raw(station201.station, json.dumps(get), "alive", timeout=30)
    assert reply is not None and reply[0] == 3 and reply[2]["status"] == "Accepted", reply
    assert station201.statuses() == []
    # One line for each refusal, from the agent and from the stack: no traceback anywhere.
    assert "Traceback" not in station201.rig.console_text()[station201.console :]


def update_frame(unique_id, firmware, **fields):
    payload = dict({"requestId": 77, "firmware": firmware}, **fields)
    return json.dumps([2, unique_id, "UpdateFirmware", payload])


def firmware(c, **fields):
    fw = c.release() if not hasattr(c, "fw") else c.fw
    c.fw = fw
    out = {"location": fw["location"], "retrieveDateTime": iso(-60),
           "signingCertificate": fw["signing_certificate"],
           "signature": fw["signature"]}  # fmt: skip
    out.update(fields)
    return {k: v for k, v in out.items() if v is not None}


def test_update_firmware_without_location_gets_a_callerror(c):
    reply = c.csms.send_raw(c.station, update_frame("m1", firmware(c, location=None)), "m1")
    # OCPP-J 4.2.3: ProtocolError, "payload for action is incomplete".
    assert reply[0] == 4 and reply[2] in ("ProtocolError", "OccurrenceConstraintViolation")


def test_update_firmware_with_wrong_types_gets_a_callerror(c):
    frame = json.loads(update_frame("m2", firmware(c)))
    frame[3]["requestId"] = "seventy-seven"
    frame[3]["retries"] = [1]
    reply = c.csms.send_raw(c.station, json.dumps(frame), "m2")
    assert reply[0] == 4 and reply[2] in ("TypeConstraintViolation", "FormatViolation")


def test_frame_that_is_not_ocpp_gets_no_answer_and_the_station_stays(c):
    for text in ("hello {", "[]", '{"UpdateFirmware": 1}', '[2, "m3"]', "[2, 3, 4, 5, 6, 7]"):
        c.csms.send_raw(c.station, text)


def test_unknown_action_gets_a_callerror(c):
    reply = c.csms.send_raw(c.station, json.dumps([2, "m4", "FlyToTheMoon", {}]), "m4")
    assert reply[0] == 4 and reply[2] in ("NotImplemented", "NotSupported")


def test_oversized_signing_certificate_gets_a_callerror(c):
    # OCPP bounds signingCertificate to 5500 characters; this one is 200 kB (the `ocpp`
    # library echoes the value in its CALLERROR: past 1 MiB that reply would end the link).
    fw = firmware(c, signingCertificate="-----BEGIN CERTIFICATE-----\n" + "A" * 200000)
    reply = c.csms.send_raw(c.station, update_frame("m5", fw), "m5")
    assert reply[0] == 4 and reply[2] in ("TypeConstraintViolation", "FormatViolation",
                                          "PropertyConstraintViolation")  # fmt: skip


def test_message_over_the_frame_limit_drops_the_link_and_the_station_reconnects(c):
    # Past the stack's websocket frame limit (1 MiB) the link is closed (1009); the stack
    # connects again and boots; the agent never saw the message.
    connections = len(c.csms.records("connections"))
    fw = firmware(c, signature="A" * (2 << 20))
    c.csms.send_raw(c.station, update_frame("m6", fw))
    c.csms.wait_for("connections", lambda e: len(c.csms.connections) > connections, 60)
    c.csms.wait_for("boots", lambda b: c.pos(b) >= c.mark, 60)


def test_update_firmware_with_an_unknown_signing_certificate_is_invalid_certificate(c):
    # Issued by another manufacturer's root, which this station never installed.
    import os

    from hil.release import ManufacturerPki

    workdir = os.path.join(c.rig.dir, "stranger")
    os.makedirs(workdir, exist_ok=True)
    stranger = ManufacturerPki(workdir)
    fw = firmware(c, signingCertificate=stranger.signing_certificate)
    reply = c.csms.send_raw(c.station, update_frame("m7", fw), "m7")
    assert reply[0] == 3 and reply[2]["status"] == "InvalidCertificate"
    c.wait_event("InvalidFirmwareSigningCertificate", 10)


def test_update_firmware_with_a_certificate_that_is_not_pem_is_invalid_certificate(c):
    for unique_id, text in (("m8", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n"
                                   "-----END CERTIFICATE-----\n"),
                            ("m9", "\x00\x01 binary junk \u00ff")):  # fmt: skip
        reply = c.csms.send_raw(c.station, update_frame(unique_id, firmware(c,
                                signingCertificate=text)), unique_id)  # fmt: skip
        assert reply[0] == 3 and reply[2]["status"] == "InvalidCertificate"
    event = c.wait_event("InvalidFirmwareSigningCertificate", 10)
    assert event["tech_info"]


def test_update_firmware_with_a_time_that_is_not_rfc3339_is_rejected(c):
    # The OCPP schema types it as a string only: the agent refuses what it cannot read.
    fw = firmware(c, retrieveDateTime="yesterday at noon")
    reply = c.csms.send_raw(c.station, update_frame("m10", fw), "m10")
    assert reply[0] == 3 and reply[2]["status"] == "Rejected"


def test_update_firmware_with_a_location_that_is_not_http_is_rejected(c):
    # FileTransferProtocols: HTTP and HTTPS. Never a file on the station itself.
    for unique_id, location in (("m11", "ftp://127.0.0.1/fw.cub"), ("m12", "file:///etc/passwd"),
                                ("m13", "not a url")):  # fmt: skip
        reply = c.csms.send_raw(c.station, update_frame(unique_id, firmware(c,
                                location=location)), unique_id)  # fmt: skip
        assert reply[0] == 3 and reply[2]["status"] == "Rejected", (location, reply)
