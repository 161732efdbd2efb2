"""The local API (agent/frontends/local_api.py) and the OCPP admission behind it
(agent/frontends/ocpp/service.py), with a stand-in for the daemon: what a stack asks over the
socket and what it is answered. The daemon's side is in tests/ocpp/test_engine.py and on the
virtual board (tests/ocpp/test_conformance_201.py)."""

import base64
import datetime
import hashlib
import json

import pytest

from agent.config import Config
from agent.frontends.local_api import LocalApi
from agent.frontends.local_client import LocalApiError, LocalClient
from agent.trust import crypto
from tests.bundle.pki import UTC, Pki, pem


class FakeDaemon:
    def __init__(self):
        self.answer = ("accepted", "ok")
        self.submitted = []
        self.allowed = 0
        self.boot_reason = None

    def submit(self, doc):
        self.submitted.append(doc)
        return self.answer

    def allow_installation(self):
        self.allowed += 1


@pytest.fixture
def pki():
    return Pki()


@pytest.fixture
def api(tmp_path, pki):
    raw = {
        "device": {"id": "cp-1", "model": "M", "hardware_revision": "r"},
        "slots": {"A": {"rootfs": "a"}, "B": {"rootfs": "b"}},
        "bootloader": {"backend": "simulated"},
        "local_api": {"socket": "run/agent.sock"},
        # Its own state dir: the default (/var/lib/charger-update) would keep the outbox of
        # every earlier run, and other tests' events would show up here.
        "state": {"dir": "state"},
    }
    (tmp_path / "mfr.pem").write_bytes(pem(pki.root))
    raw["ocpp_firmware"] = {"manufacturer_roots": ["mfr.pem"]}
    cfg = Config(raw, str(tmp_path / "agent.toml"))
    api = LocalApi(cfg)
    daemon = FakeDaemon()
    api.start(daemon)
    api.daemon = daemon
    yield api
    api.stop()


@pytest.fixture
def client(api):
    c = LocalClient(api.path)
    yield c
    c.close()


def signed(pki):
    sig = crypto.sign_digest(pki.signer_key, hashlib.sha256(b"fw").digest())
    return {"signing_certificate": pki.signing_cert_pem.decode(),
            "signature": base64.b64encode(sig).decode()}  # fmt: skip


def update(client, pki, **extra):
    fields = dict(signed(pki), request_id=7, location="https://fw.example/x.cub")
    fields.update(extra)
    return client.call("update_firmware", **fields)["status"]


def test_accepted_request_becomes_one_job_with_the_engine_options(api, client, pki):
    assert update(client, pki, retries=2, retry_interval_s=30,
                  install_at="2030-01-01T00:00:00.000Z") == "Accepted"  # fmt: skip
    [doc] = api.daemon.submitted
    assert doc["id"].startswith("ocpp-7-") and doc["retries"] == 2
    assert doc["retry_interval_s"] == 30 and doc["block_new_sessions"] is True
    assert doc["signature"] and doc["signing_certificate"]
    # The OCPP record is saved before the answer: statuses of the job carry requestId 7.
    assert api.service.outbox.request(doc["id"])["request_id"] == 7


@pytest.mark.parametrize(
    "answer, status",
    [(("accepted-canceled", ""), "AcceptedCanceled"), (("rejected", "busy"), "Rejected")],
)
def test_engine_answer_is_the_response(api, client, pki, answer, status):
    api.daemon.answer = answer
    assert update(client, pki) == status


def test_secure_only_station_rejects_unsigned_request(api, client, pki):
    # TC_L_18: no signing certificate and no signature -> Rejected (or InvalidCertificate).
    assert client.call("update_firmware", request_id=1, location="https://x/y")["status"] == (
        "Rejected"
    )
    assert api.daemon.submitted == []


def test_invalid_certificate_is_answered_with_the_security_event(api, client, pki):
    # TC_L_05: the signing certificate is expired.
    now = datetime.datetime.now(UTC)
    old = Pki(not_before=now - datetime.timedelta(days=30),
              not_after=now - datetime.timedelta(days=1))  # fmt: skip
    old.root, old.root_key = pki.root, pki.root_key
    from tests.bundle.pki import make_cert

    old.signer = make_cert(old.signer_key, "Expired Signer", pki.root_key, pki.root,
                           not_before=now - datetime.timedelta(days=30),
                           not_after=now - datetime.timedelta(days=1))  # fmt: skip
    assert update(client, old) == "InvalidCertificate"
    assert api.daemon.submitted == []
    client.call("boot_notification", status="Accepted")
    [event] = client.call("events", wait_s=1)["events"]
    assert event["event"] == "InvalidFirmwareSigningCertificate"
    assert "valid" in event["tech_info"]


def test_nothing_handed_out_before_the_boot_was_accepted(api, client, pki):
    assert update(client, pki) == "Accepted"
    api.service.status("Downloading", {"job_id": api.daemon.submitted[0]["id"]})
    assert client.call("events", wait_s=0.2)["events"] == []
    client.call("boot_notification", status="Pending")
    assert client.call("events", wait_s=0.2)["events"] == []
    client.call("boot_notification", status="Accepted")
    [entry] = client.call("events", wait_s=1)["events"]
    assert entry == {"type": "status", "status": "Downloading", "request_id": 7,
                     "seq": entry["seq"]}  # fmt: skip
    assert client.call("trigger_status") == {"ok": True, "status": "Downloading", "request_id": 7}
    client.call("ack", seq=entry["seq"], error="NotImplemented")  # logged, delivery ends
    assert client.call("events", wait_s=0.1)["events"] == []


def test_statuses_of_other_jobs_never_reach_this_stack(api, client):
    api.service.status("Committed", {"job_id": "rollout-17"})  # an MQTT job
    client.call("boot_notification", status="Accepted")
    assert client.call("events", wait_s=0.1)["events"] == []
    assert client.call("trigger_status")["status"] == "Idle"


def test_manufacturer_root_rotation_over_the_socket(api, client):
    new = Pki()
    ids = client.call("get_installed_certificate_ids",
                      certificate_type=["ManufacturerRootCertificate"])  # fmt: skip
    assert ids["status"] == "Accepted" and len(ids["certificate_hash_data"]) == 1
    assert client.call("install_certificate", certificate_type="ManufacturerRootCertificate",
                       certificate=pem(new.root).decode())["status"] == "Accepted"  # fmt: skip
    ids = client.call("get_installed_certificate_ids")["certificate_hash_data"]
    assert len(ids) == 2
    installed = [i for i in ids if int(i["serial_number"], 16) == new.root.serial_number][0]
    assert client.call("delete_certificate", certificate_hash_data=installed)["status"] == (
        "Accepted"
    )
    # The provisioned root is the OEM's: a CSMS cannot delete it.
    assert client.call("delete_certificate", certificate_hash_data=ids[0])["status"] in (
        "Failed", "NotFound")  # fmt: skip
    assert client.call("install_certificate", certificate_type="V2GRootCertificate",
                       certificate=pem(new.root).decode())["status"] == "Rejected"  # fmt: skip


def test_allow_and_boot_reason(api, client):
    client.call("allow_installation")
    assert api.daemon.allowed == 1
    assert client.call("boot_reason")["boot_reason"] is None
    api.daemon.boot_reason = "FirmwareUpdate"
    assert client.call("boot_reason")["boot_reason"] == "FirmwareUpdate"


@pytest.mark.parametrize(
    "line, error",
    [
        (b"not json\n", "not JSON"),
        (b"[1]\n", "object"),
        (b'{"op": "fly"}\n', "unknown op"),
        (b'{"op": "ack", "seq": "x"}\n', "seq"),
        (b'{"op": "events", "wait_s": -1}\n', "wait_s"),
        (b'{"op": "install_certificate"}\n', "bad install_certificate"),
    ],
)
def test_bad_requests_get_an_error_and_the_connection_stays(api, line, error):
    import json
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(api.path)
        f = s.makefile("rwb")
        f.write(line)
        f.flush()
        reply = json.loads(f.readline())
        assert reply["ok"] is False and error in reply["error"]
        f.write(b'{"op": "trigger_status"}\n')
        f.flush()
        assert json.loads(f.readline())["ok"] is True


def test_client_raises_on_refusal_and_on_absence(api, client, tmp_path):
    with pytest.raises(LocalApiError, match="unknown op"):
        client.call("fly")
    with pytest.raises(LocalApiError, match="agent at"):
        LocalClient(str(tmp_path / "nothing.sock")).call("trigger_status")


@pytest.mark.parametrize(
    "section, table, message",
    [
        ("ocpp_firmware", {"secure_onyl": False}, "unknown key"),
        ("ocpp_firmware", {"secure_only": "no"}, "must be bool"),
        ("local_api", {"mode": "0660"}, "must be int"),
        ("everest", {"module": "x"}, "unknown key"),
    ],
)
def test_config_typos_are_clear_errors(tmp_path, section, table, message):
    from agent.commands.run import frontends_from_config
    from agent.core.errors import ConfigError

    raw = {"device": {"id": "cp-1", "model": "M", "hardware_revision": "r"},
           "slots": {"A": {"rootfs": "a"}, "B": {"rootfs": "b"}},
           "bootloader": {"backend": "simulated"}, "local_api": {}, section: table}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        frontends_from_config(Config(raw, str(tmp_path / "agent.toml")))


@pytest.mark.parametrize(
    "line, error",
    [
        (b"[" * 30000, "not JSON"),  # nested past the parser's recursion
        (b'{"op": []}', "unknown op"),  # an unhashable op
        (b'{"op": "delete_certificate", "certificate_hash_data": true}', "must be an object"),
        (b'{"op": "update_firmware", "request_id": 7, "signing_certificate": true, '
         b'"signature": "AA", "location": "https://x/b.cub"}', None),
    ],
)  # fmt: skip
def test_malformed_request_is_answered_and_the_connection_stays_usable(api, line, error):
    """Found by fuzzing (tests/fuzz, local-api): these killed the connection's thread (no
    reply line at all) or came back as "internal error"."""
    import io

    rfile, wfile = io.BytesIO(line + b'\n{"op": "boot_reason"}\n'), io.BytesIO()
    api.serve_connection(rfile, wfile)
    first, second = [json.loads(x) for x in wfile.getvalue().splitlines()]
    if error is None:
        assert first == {"ok": True, "status": "Rejected"}
    else:
        assert first["ok"] is False and error in first["error"]
    assert second["ok"] is True
