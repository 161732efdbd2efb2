"""The local API (agent/frontends/local_api.py) and the OCPP admission behind it
(agent/frontends/ocpp/service.py), with a stand-in for the daemon: what a stack asks over the
socket and what it is answered, and what it sends that it should not. The engine's side is in
tests/core/scenarios_frontend.py, the daemon's in tests/daemon/test_daemon_unit.py, the whole
on the virtual board (tests/ocpp/test_conformance_201.py)."""

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
        "state": {"dir": "state"},  # never the board's default /var/lib/charger-update
        "local_api": {"socket": "run/agent.sock"},
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


def test_non_secure_station_takes_an_unsigned_request_as_l02(tmp_path, pki):
    # [ocpp_firmware] secure_only = false: OCPP 2.0.1 L02, the trust rests on the bundle's own
    # signed manifest alone. Half a signature is still refused.
    raw = {"device": {"id": "cp-1", "model": "M", "hardware_revision": "r"},
           "slots": {"A": {"rootfs": "a"}, "B": {"rootfs": "b"}},
           "bootloader": {"backend": "simulated"}, "state": {"dir": "state"},
           "local_api": {"socket": "run/agent.sock"},
           "ocpp_firmware": {"secure_only": False}}  # fmt: skip
    api = LocalApi(Config(raw, str(tmp_path / "agent.toml")))
    api.start(FakeDaemon())
    try:
        client = LocalClient(api.path)
        assert client.call("update_firmware", request_id=3,
                           location="https://x/y.cub")["status"] == "Accepted"  # fmt: skip
        [doc] = api.service.daemon.submitted
        assert doc["signature"] is None and doc["signing_certificate"] is None
        half = {"request_id": 4, "location": "https://x/y.cub", "signature": "c2ln"}
        assert client.call("update_firmware", **half)["status"] == "Rejected"
        client.close()
    finally:
        api.stop()


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
        (b"\xff\xfe garbage \x00\n", "not JSON"),
        (b"[" * 60000 + b"\n", "not JSON"),  # nested past the parser's recursion limit
        (b'{"op": ["update_firmware"]}\n', "unknown op"),  # unhashable: no KeyError either
        (b'{"op": {"a": 1}}\n', "unknown op"),
        (b'{"op": "boot_notification", "status": 1}\n', "status must be str"),
        (b'{"op": "delete_certificate", "certificate_hash_data": "x"}\n', "must be dict"),
        (
            b'{"op": "delete_certificate", "certificate_hash_data": {"serial_number": 1}}\n',
            "serial_number must be str",
        ),  # fmt: skip
        (b'{"op": "get_installed_certificate_ids", "certificate_type": "x"}\n', "list"),
        (
            b'{"op": "install_certificate", "certificate_type": "ManufacturerRootCertificate",'
            b' "certificate": 5}\n',
            "certificate must be str",
        ),  # fmt: skip
        (b'{"op": "ack", "seq": 1, "error": ["x"]}\n', "error must be str"),
    ],
)
def test_bad_requests_get_an_error_and_the_connection_stays(api, line, error, caplog):
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
    assert not [r for r in caplog.records if r.exc_info]  # one error line, no traceback


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("request_id", "7", "request_id must be int"),
        ("request_id", True, "request_id must be int"),
        ("request_id", None, "request_id is missing"),
        ("location", 42, "location must be str"),
        ("retries", "3", "retries must be int"),
        ("retry_interval_s", 1.5, "retry_interval_s must be int"),
        ("install_at", "tomorrow", "install_at is not an RFC 3339 time"),
        ("retrieve_at", ["2030-01-01T00:00:00Z"], "retrieve_at must be str or int"),
        ("signature", 5, "signature must be str"),
        ("allow_new_sessions", "yes", "allow_new_sessions must be bool"),
    ],
)
def test_update_firmware_with_wrong_types_gets_one_clear_error(api, client, pki, field, value,
                                                               error, caplog):  # fmt: skip
    fields = dict(signed(pki), request_id=7, location="https://fw.example/x.cub")
    fields[field] = value
    with pytest.raises(LocalApiError, match="bad update_firmware request: " + error):
        client.call("update_firmware", **fields)
    assert api.daemon.submitted == [] and api.service.outbox.pending() == []
    assert not [r for r in caplog.records if r.exc_info]
    assert update(client, pki) == "Accepted"  # the same connection still serves


def test_oversized_line_gets_an_error_then_the_connection_closes(api):
    import json
    import socket

    from agent.frontends.local_api import MAX_LINE

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(api.path)
        f = s.makefile("rwb")
        f.write(b'{"op": "trigger_status", "pad": "' + b"x" * (MAX_LINE + 10) + b'"}\n')
        f.flush()
        reply = json.loads(f.readline())
        assert reply["ok"] is False and "longer than" in reply["error"]
        assert f.readline() == b""  # the rest of that line cannot be told from a request
    assert LocalClient(api.path).call("trigger_status")["ok"] is True


def test_client_disconnecting_mid_line_leaves_the_api_serving(api, caplog, monkeypatch):
    import socket
    import threading

    crashed, served = [], threading.Semaphore(0)
    monkeypatch.setattr(threading, "excepthook", crashed.append)  # a thread's traceback
    serve = api._serve

    def counted(conn):
        try:
            serve(conn)
        finally:
            served.release()

    monkeypatch.setattr(api, "_serve", counted)
    for partial in (b'{"op": "update_firmware", "request_id": 7, "loca', b"", b"\xff"):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(api.path)
            s.sendall(partial)
    # A request sent and the client gone before its reply: the reply's write fails.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(api.path)
        s.sendall(b'{"op": "events", "wait_s": 0.2}\n')
    for _ in range(4):
        assert served.acquire(timeout=10)
    assert crashed == []
    assert LocalClient(api.path).call("trigger_status")["ok"] is True
    assert api.daemon.submitted == []
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]


def test_too_many_clients_are_refused_and_the_api_keeps_serving(api):
    import json
    import socket
    import threading

    from agent.frontends.local_api import MAX_CLIENTS

    places, freed = api.clients, threading.Event()

    class Watched:  # the semaphore, telling when a connection gave its place back
        acquire = places.acquire

        def release(self):
            places.release()
            freed.set()

    api.clients = Watched()

    held = [LocalClient(api.path) for _ in range(MAX_CLIENTS)]
    for c in held:
        assert c.call("trigger_status")["ok"]  # each holds its connection and a thread
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(api.path)
        f = s.makefile("rb")
        assert json.loads(f.readline()) == {"ok": False, "error": "too many clients"}
        assert f.readline() == b""
    held.pop().close()
    assert freed.wait(10)
    assert LocalClient(api.path).call("trigger_status")["ok"]  # a freed place is taken again
    for c in held:
        c.close()


def test_silent_client_is_closed_and_its_client_reconnects(api):
    import socket

    api.idle_timeout_s = 0.2
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(api.path)
        s.settimeout(10)
        assert s.recv(10) == b""  # closed by the agent, not by this test's timeout
    kept = LocalClient(api.path)
    assert kept.call("trigger_status")["ok"]
    kept.sock.settimeout(10)
    assert kept.sock.recv(1) == b""  # the agent closed the kept connection
    api.idle_timeout_s = 300
    assert kept.call("trigger_status")["ok"]  # reopened once, the request sent again
    kept.close()


def test_an_abandoned_long_poll_loses_no_entry(api, client, pki):
    # The reference stack after a reconnect: the old session's pump still long-polls
    # `events` on its thread when the new session's pump asks too, on the same client (the
    # client's calls take turns on the line). The entry the old, abandoned poll got is never
    # acknowledged, so the new poll gets it as well: nothing is lost.
    import threading

    client.call("boot_notification", status="Accepted")
    assert update(client, pki) == "Accepted"
    job = api.daemon.submitted[0]["id"]
    shared = LocalClient(api.path, timeout=3.0)
    polling, events = threading.Semaphore(0), api.service.events

    def watched(wait_s):
        polling.release()
        return events(wait_s)

    api.service.events = watched
    got = {}
    old = threading.Thread(target=lambda: got.update(old=shared.call("events", wait_s=5)))
    old.start()
    assert polling.acquire(timeout=10)  # the old poll waits in the agent
    new = threading.Thread(target=lambda: got.update(new=shared.call("events", wait_s=5)))
    new.start()
    api.service.status("Downloading", {"job_id": job})
    old.join(20)
    new.join(20)
    assert [e["status"] for e in got["old"]["events"]] == ["Downloading"]
    assert [e["status"] for e in got["new"]["events"]] == ["Downloading"]
    shared.close()


def test_client_never_resends_a_request_that_timed_out(tmp_path):
    # The agent may have taken an update it did not answer in time: sending it again would
    # make a second job for the same requestId.
    import socket
    import threading

    path = str(tmp_path / "slow.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(2)
    lines, done = [], threading.Event()

    def silent():
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as f:
            lines.append(f.readline())
            done.wait(10)

    threading.Thread(target=silent, daemon=True).start()
    try:
        with pytest.raises(LocalApiError, match="did not answer update_firmware"):
            LocalClient(path, timeout=0.3).call("update_firmware", request_id=7)
    finally:
        done.set()
        server.close()
    assert len(lines) == 1


def test_client_command_refuses_fields_that_are_not_json(api, capsys):
    from agent.frontends.local_client import main

    assert main([api.path, "trigger_status", "{request_id: 7"]) == 2
    assert main([api.path, "trigger_status", "[1]"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: JSON-FIELDS must be a JSON object") == 2 and "Traceback" not in err
    assert main([api.path, "fly"]) == 1
    assert main([api.path, "trigger_status"]) == 0


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
           "bootloader": {"backend": "simulated"}, "state": {"dir": "state"},
           "local_api": {}, section: table}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        frontends_from_config(Config(raw, str(tmp_path / "agent.toml")))


@pytest.mark.parametrize(
    "line, error",
    [
        (b"[" * 30000, "not JSON"),  # nested past the parser's recursion
        (b'{"op": []}', "unknown op"),  # an unhashable op
        (b'{"op": "delete_certificate", "certificate_hash_data": true}', "must be dict"),
        (b'{"op": "update_firmware", "request_id": 7, "signing_certificate": true, '
         b'"signature": "AA", "location": "https://x/b.cub"}', "must be str"),
    ],
)  # fmt: skip
def test_malformed_request_is_answered_and_the_connection_stays_usable(api, line, error):
    """Found by fuzzing (tests/fuzz, local-api): these killed the connection's thread (no
    reply line at all) or came back as "internal error"."""
    import io

    rfile, wfile = io.BytesIO(line + b'\n{"op": "boot_reason"}\n'), io.BytesIO()
    api.serve_connection(rfile, wfile)
    first, second = [json.loads(x) for x in wfile.getvalue().splitlines()]
    assert first["ok"] is False and error in first["error"]
    assert second["ok"] is True
