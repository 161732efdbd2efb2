"""The MicroPython agent over TLS, under the real unix port (its mbedtls): a mosquitto that
takes TLS with client certificates only and a per-device ACL, releases served over https by
the project's HTTP server, both certificates issued by the rig's CA (hil/services/mosquitto.py
Pki). The board verifies both servers against the CA it was provisioned with; a server its CA
did not sign, or a board without a CA, gets no connection and no byte of the slot.
"""

import os
import re

from agent.core.lifecycle import FINAL_STATUSES
from hil.mpyboard.rig import MpyRig
from hil.services.httpserver import make_tls
from tests.micropython.test_mpy_agent import T, otadata

# TLS keeps heap of its own: one mbedtls context per link (MQTT, downloads; about 3 KiB each
# in one piece) and the socket's. With the journey parked during the transfer steps the
# smallest heap that completed this update was 112K (110K 1 of 2, 108K never online); 8K
# above it, as the plain tests' HEAP is above theirs (docs/micropython.md, "TLS").
HEAP = "120K"

ERASED = 0xFFFFFFFF  # otadata's second entry before any set_boot


def _rig(tmp_path, edit=None, **kw):
    """A started TLS rig whose board is powered on after `edit(cfg, board_dir)` changed its
    agent.json (as a factory would have provisioned it)."""
    r = MpyRig(str(tmp_path / "rig"), heap=HEAP, trial_window_s=30, **kw)
    r.start()
    if edit is not None:
        r.edit_config(edit)
    r.power_on()
    return r


def _stranger_ca(tmp_path):
    """A CA certificate (PEM) that signed neither server: what a board provisioned for
    another backend, or an attacker's server, would meet."""
    (tmp_path / "stranger").mkdir()
    _, ca_path = make_tls(str(tmp_path / "stranger"))
    return ca_path


def _replace(source, board_dir, name):
    with open(source, "rb") as src, open(os.path.join(board_dir, name), "wb") as dst:
        dst.write(src.read())


def test_good_update_over_tls_mqtt_and_https_commits(tmp_path, micropython):
    r = _rig(tmp_path, tls=True, https=True)
    try:
        r.wait_online(30)
        url = r.release("1.1.0")
        assert url.startswith("https://")
        job = r.push_job("1.1.0", url)
        final = r.wait_status(job["id"], FINAL_STATUSES, T)
        assert final["status"] == "Committed", final
        assert otadata(r)[1] == (2, 2)
        # Only TLS could have carried these: the broker's one listener requires a client
        # certificate, and the image server speaks https only (hil/services).
        assert r.images.requests and r.images.body_bytes > 0
    finally:
        r.close()


def test_broker_certificate_from_another_ca_gets_no_connection(tmp_path, micropython):
    stranger = _stranger_ca(tmp_path)

    def edit(cfg, board_dir):
        _replace(stranger, board_dir, cfg["mqtt"]["tls"]["ca_file"])

    r = _rig(tmp_path, edit=edit, tls=True)
    try:
        line = r.board.wait_line("MQTT backend unreachable", 30, anywhere=True)
        assert "not correctly signed by the trusted CA" in line, line
        # A second attempt, after the back-off, fails the same way: never a plain fallback.
        r.board.wait_line("not correctly signed by the trusted CA", 30)
        assert r.inventory() is None and r.statuses() == []
    finally:
        r.close()


def test_a_missing_client_certificate_is_named(tmp_path, micropython):
    def edit(cfg, board_dir):
        os.remove(os.path.join(board_dir, cfg["mqtt"]["tls"]["key_file"]))

    r = _rig(tmp_path, edit=edit, tls=True)
    try:
        line = r.board.wait_line("MQTT backend unreachable", 30, anywhere=True)
        assert "mqtt.tls key_file" in line and "cannot be read" in line, line
        assert r.inventory() is None
    finally:
        r.close()


def test_https_server_from_another_ca_is_not_trusted_and_nothing_is_written(tmp_path, micropython):
    stranger = _stranger_ca(tmp_path)

    def edit(cfg, board_dir):
        _replace(stranger, board_dir, cfg["download"]["ca_file"])

    r = _rig(tmp_path, edit=edit, https=True)
    try:
        r.wait_online(30)
        # No retries: the journey would try again later (the certificate may be fixed on
        # the server meanwhile); the final status carries what went wrong.
        job = r.push_job("1.1.0", r.release("1.1.0"), retries=0)
        final = r.wait_status(job["id"], FINAL_STATUSES, T)
        assert final["status"] == "DownloadFailed" and final["reason"] == "network", final
        assert "TLS certificate of 127.0.0.1 not trusted" in final["detail"], final
        assert "not correctly signed by the trusted CA" in final["detail"], final
        assert r.images.requests == []  # no request got past the handshake
        assert otadata(r)[1][0] == ERASED  # set_boot never ran
        assert len(re.findall(r.boot_banner, r.console_text())) == 1
    finally:
        r.close()


def test_https_server_under_another_name_is_not_trusted(tmp_path, micropython):
    # The rig's servers listen on 127.0.0.2, which the CA's server certificate does not
    # name (localhost, 127.0.0.1): a valid certificate for someone else.
    r = _rig(tmp_path, https=True, listen="127.0.0.2")
    try:
        r.wait_online(30)
        url = r.release("1.1.0")
        assert url.startswith("https://127.0.0.2:")
        job = r.push_job("1.1.0", url, retries=0)
        final = r.wait_status(job["id"], FINAL_STATUSES, T)
        assert final["status"] == "DownloadFailed" and final["reason"] == "network", final
        assert "TLS certificate of 127.0.0.2 not trusted" in final["detail"], final
        assert "does not match" in final["detail"], final
        assert r.images.requests == [] and otadata(r)[1][0] == ERASED
    finally:
        r.close()


def test_https_without_a_ca_file_is_refused_as_config(tmp_path, micropython):
    def edit(cfg, board_dir):
        del cfg["download"]["ca_file"]

    r = _rig(tmp_path, edit=edit, https=True)
    try:
        r.wait_online(30)
        job = r.push_job("1.1.0", r.release("1.1.0"))
        final = r.wait_status(job["id"], FINAL_STATUSES, T)
        assert final["status"] == "DownloadFailed" and final["reason"] == "config", final
        assert "download ca_file is not set" in final["detail"], final
        assert otadata(r)[1][0] == ERASED
    finally:
        r.close()


LOGIN_SCRIPT = """
import sys, time
from agent.mpy.channel import Channel
c = Channel({"host": "127.0.0.1", "port": int(sys.argv[1]), "username": sys.argv[2],
             "password": sys.argv[3], "reconnect_max_s": 0.5}, "mpy-login")
end = time.time() + 20
while not c.connected and time.time() < end and c.connections == 0:
    c.poll()
    if c.last_error:
        break
    time.sleep(0.05)
print("connected" if c.connected else "refused", c.last_error)
"""


def test_username_and_password_are_what_the_broker_checks(micropython, tmp_path):
    from hil.services.mosquitto import Mosquitto

    broker = Mosquitto(str(tmp_path / "broker"), users={"mpy-login": "s3cret"}).start()
    script = tmp_path / "login.py"
    script.write_text(LOGIN_SCRIPT)
    try:
        good = micropython.run(script, args=[str(broker.port), "mpy-login", "s3cret"], timeout=60)
        bad = micropython.run(script, args=[str(broker.port), "mpy-login", "guess"], timeout=60)
    finally:
        broker.stop()
    assert good.stdout.splitlines()[-1] == "connected ", good.stdout + good.stderr
    # umqtt.simple2 raises 20 + the CONNACK code: 5, not authorised. The board keeps
    # retrying, and says why.
    assert bad.stdout.splitlines()[-1] == (
        "refused MQTTException: 25 (the broker refused the connection: not authorised; "
        "check mqtt username/password or the client certificate)"
    ), bad.stdout + bad.stderr


FD_SCRIPT = """
import os, sys
from agent.mpy.channel import Channel
tls = {"ca_file": sys.argv[2], "cert_file": sys.argv[3], "key_file": sys.argv[4]}
c = Channel({"host": "127.0.0.1", "port": int(sys.argv[1]), "tls": tls}, "mpy-fd")
before = len(os.listdir("/proc/self/fd"))
for _ in range(6):
    c.retry_at = 0  # no back-off: attempt after attempt
    c.poll()
print("connected", c.connected, "fds", len(os.listdir("/proc/self/fd")) - before, c.last_error)
"""


def test_failed_tls_connections_leave_no_socket_open(micropython, tmp_path):
    # Unix-port sockets have no finaliser, and a board's socket table is small: a broker
    # whose certificate the board refuses, retried, must not eat a socket per attempt.
    from hil.services.mosquitto import Mosquitto, Pki

    pki = Pki(str(tmp_path / "pki"))
    broker = Mosquitto(str(tmp_path / "broker"), pki=pki).start()
    cert, key = pki.client("mpy-fd")
    script = tmp_path / "fd.py"
    script.write_text(FD_SCRIPT)
    try:
        done = micropython.run(
            script, args=[str(broker.port), _stranger_ca(tmp_path), cert, key], timeout=60
        )
    finally:
        broker.stop()
    last = done.stdout.splitlines()[-1] if done.stdout else done.stderr
    assert last.startswith("connected False fds 0 "), done.stdout + done.stderr
    assert "not correctly signed by the trusted CA" in last, last


DL_FD_SCRIPT = """
import os, sys
from agent.mpy.http import Download
from agent.mpy import tls
from agent.core.errors import UpdateError
ctx = tls.context({"ca_file": sys.argv[2]}, "download")
before = len(os.listdir("/proc/self/fd"))
for _ in range(5):
    try:
        Download(sys.argv[1], 100, 5, retries=0, tls=lambda: ctx).read(10)
    except UpdateError as e:
        error = e.message
print("fds", len(os.listdir("/proc/self/fd")) - before, error)
"""


def test_failed_https_connections_leave_no_socket_open(micropython, tmp_path):
    from hil.services.httpserver import FileServer

    context, _ = make_tls(str(tmp_path))
    server = FileServer({"b.cub": b"0123456789"}, ssl_context=context).start()
    script = tmp_path / "dlfd.py"
    script.write_text(DL_FD_SCRIPT)
    try:
        done = micropython.run(
            script, args=[server.url("b.cub"), _stranger_ca(tmp_path)], heap="256K", timeout=60
        )
    finally:
        server.stop()
    last = done.stdout.splitlines()[-1] if done.stdout else done.stderr
    assert last.startswith("fds 0 TLS certificate of 127.0.0.1 not trusted"), (
        done.stdout + done.stderr
    )


def test_a_ca_bundle_and_a_key_with_its_parameters_are_read_whole(micropython, tmp_path):
    # A CA bundle (the old CA first, as during a rotation) and a key as `openssl ecparam
    # -genkey` writes it (an EC PARAMETERS block before the key): every CA counts, and the
    # key is the PRIVATE KEY block, whatever comes first.
    from hil.services.mosquitto import Mosquitto, Pki

    pki = Pki(str(tmp_path / "pki"))
    broker = Mosquitto(str(tmp_path / "broker"), pki=pki).start()
    cert, key = pki.client("mpy-fd")
    bundle, key_with_params = tmp_path / "bundle.pem", tmp_path / "key.pem"
    with open(_stranger_ca(tmp_path), "rb") as old, open(pki.ca_file, "rb") as new:
        bundle.write_bytes(old.read() + new.read())
    with open(key, "rb") as f:
        params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
        key_with_params.write_bytes(params + f.read())
    script = tmp_path / "fd.py"
    script.write_text(FD_SCRIPT)
    try:
        done = micropython.run(
            script, args=[str(broker.port), str(bundle), cert, str(key_with_params)], timeout=60
        )
    finally:
        broker.stop()
    assert done.stdout.splitlines()[-1].startswith("connected True"), done.stdout + done.stderr


def test_a_broker_certificate_for_another_name_gets_no_connection(micropython, tmp_path):
    # The broker listens on 127.0.0.2, which its certificate (localhost, 127.0.0.1) does
    # not name: the board, dialling 127.0.0.2, must refuse it.
    from hil.services.mosquitto import Mosquitto, Pki

    pki = Pki(str(tmp_path / "pki"))
    broker = Mosquitto(str(tmp_path / "broker"), pki=pki, host="127.0.0.2").start()
    cert, key = pki.client("mpy-fd")
    script = tmp_path / "name.py"
    script.write_text(FD_SCRIPT.replace('"127.0.0.1"', '"127.0.0.2"'))
    try:
        done = micropython.run(script, args=[str(broker.port), pki.ca_file, cert, key], timeout=60)
    finally:
        broker.stop()
    last = done.stdout.splitlines()[-1] if done.stdout else done.stderr
    assert last.startswith("connected False fds 0 "), done.stdout + done.stderr
    assert "does not match" in last, last


def test_a_broker_that_trickles_its_handshake_is_cut_at_handshake_s(micropython, tmp_path):
    # Someone on the path who sends the broker's handshake a few bytes at a time: before,
    # each read waited at most 5 s but the handshake as long as the trickle lasted, holding
    # the board's loop; now the whole handshake is bounded (mqtt.tls handshake_s).
    from hil.services.faultproxy import FaultProxy

    r = MpyRig(str(tmp_path / "rig"), heap=HEAP, tls=True)
    r.start()
    proxy = FaultProxy("127.0.0.1", r.broker.port, rate=200).start()  # 200 B/s: about 10 s

    def edit(cfg, _board_dir):
        cfg["mqtt"]["port"] = proxy.port
        cfg["mqtt"]["tls"]["handshake_s"] = 1

    try:
        r.edit_config(edit)
        r.power_on()
        line = r.board.wait_line("MQTT backend unreachable", 30, anywhere=True)
        assert "TLS handshake with 127.0.0.1 not done within 1 s" in line, line
        assert r.inventory() is None
        proxy.rate = 0  # the path is fast again: the next attempt connects
        r.wait_online(30)
    finally:
        proxy.stop()
        r.close()


def test_a_wrong_handshake_bound_is_named(micropython, tmp_path):
    def edit(cfg, _board_dir):
        cfg["mqtt"]["tls"]["handshake_s"] = -1

    r = _rig(tmp_path, edit=edit, tls=True)
    try:
        line = r.board.wait_line("MQTT backend unreachable", 30, anywhere=True)
        assert "mqtt.tls handshake_s must be a number of seconds from 1 to 600" in line, line
    finally:
        r.close()


RESET_SCRIPT = """
import socket, sys
from agent.mpy import tls, tlsio
escaped = []
Bounded = tlsio.Bounded


class Spy(Bounded):
    # what mbedtls's C code would see raised through it
    def readinto(self, buf):
        try:
            return Bounded.readinto(self, buf)
        except Exception as e:
            escaped.append(repr(e))
            raise


tlsio.Bounded = Spy  # tls.wrap takes it by name at each call
ctx = tls.context({"ca_file": sys.argv[2]}, "mqtt.tls")
for _ in range(5):
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", int(sys.argv[1]))[0][-1])
    try:
        tls.wrap(ctx, s, "127.0.0.1", 5, 5)
        last = "connected"
    except Exception as e:
        last = "%s %s" % (type(e).__name__, e)
    s.close()
print("escaped", len(escaped), last)
"""


def test_a_reset_in_the_handshake_is_an_error_code_not_raised_through_mbedtls(
    micropython, tmp_path
):
    # A peer that resets the connection after the ClientHello: the socket's error reaches
    # mbedtls as an error code (it then frees its state and the TLS socket raises), never as
    # an exception unwinding through its C code.
    import socket
    import struct
    import threading

    from hil.services.mosquitto import Pki

    pki = Pki(str(tmp_path / "pki"))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def reset_each():
        for _ in range(5):
            conn, _ = server.accept()
            conn.recv(4096)  # the ClientHello
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # RST

    threading.Thread(target=reset_each, daemon=True).start()
    script = tmp_path / "reset.py"
    script.write_text(RESET_SCRIPT)
    try:
        done = micropython.run(script, args=[str(server.getsockname()[1]), pki.ca_file],
                               timeout=60)  # fmt: skip
    finally:
        server.close()
    last = done.stdout.splitlines()[-1] if done.stdout else done.stderr
    assert last.startswith("escaped 0 OSError"), done.stdout + done.stderr
