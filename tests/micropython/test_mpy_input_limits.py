"""Bad input from outside never crashes the MicroPython agent (issue 11), on the real unix
port: a deeply nested MQTT message within the size bound (its json.loads used to end in a
MemoryError out of the message callback), and an HTTP answer with a header line that is not
UTF-8 or a Content-Length in Unicode digits (a UnicodeError, or a ValueError from int(), out
of the download step). The HTTP server is real, on 127.0.0.1."""

import socket
import threading

import pytest

pytestmark = pytest.mark.timeout(120)

CHANNEL_SCRIPT = """
from agent.mpy.channel import Channel, JOB
ch = Channel({}, "cp-1")
refused, taken = [], []
ch.on_error = lambda suffix, reason, detail: refused.append(reason + ": " + detail)
ch.subscribe(JOB, taken.append)
topic = ch.topic(JOB).encode()
msg = bytearray(b"[" * 20000)
msg.extend(b"]" * 20000)
ch._on_message(topic, msg)
ch._on_message(topic, b'{"a": [[[["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]]]]}')
ch._on_message(topic, b'{"id": "\\xff"}')
print("refused", refused)
print("taken", taken)
"""


def test_deeply_nested_message_is_refused_not_a_memory_error(micropython, tmp_path):
    script = tmp_path / "channel.py"
    script.write_text(CHANNEL_SCRIPT)
    done = micropython.run(script, heap="160K")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "refused ['malformed-json: nested deeper than 16', 'malformed-json: not UTF-8" in (
        done.stdout
    ), done.stdout
    # brackets inside a string are text, not nesting
    assert "taken [{'a': [[[['[[[[" in done.stdout, done.stdout


class OneAnswer:
    """A real TCP server on 127.0.0.1 that answers every connection with `head` + body."""

    def __init__(self, head, body=b"0123456789"):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.head, self.body = head, body
        self.url = "http://127.0.0.1:%d/b.cub" % self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(4096)
                    self._answer(conn)
                except OSError:  # the client hung up: what some tests want
                    pass

    def _answer(self, conn):
        conn.sendall(self.head + b"\r\n" + self.body)


def _run(micropython, tmp_path, server, text):
    """`text` run under the unix port with the server's URL as its argument; the server is
    closed after."""
    script = tmp_path / "script.py"
    script.write_text(text)
    try:
        done = micropython.run(script, args=[server.url], timeout=60)
    finally:
        server.sock.close()
    assert done.returncode == 0, done.stderr + done.stdout
    return done


DOWNLOAD_SCRIPT = """
import sys
from agent.mpy.http import Download
from agent.core.errors import UpdateError
d = Download(sys.argv[1], 100, 5, retries=0)
try:
    print("read", d.read_exact(10, "header"))
except UpdateError as e:
    print("refused", e.reason, e.message)
"""


@pytest.mark.parametrize(
    "head, said",
    [
        (b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 10\r\n", "not UTF-8"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa1\xd9\xa0\r\n", "no Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n", "read b'0123456789'"),
    ],
)
def test_odd_http_header_bytes_are_refused_not_a_crash(micropython, tmp_path, head, said):
    server = OneAnswer(head)
    done = _run(micropython, tmp_path, server, DOWNLOAD_SCRIPT)
    assert said in done.stdout, done.stdout
    if said != "read b'0123456789'":
        assert "refused malformed " in done.stdout, done.stdout


class Trickle(OneAnswer):
    """Answers with `head`, then `tail` one byte every `every` seconds (pacing, not
    synchronisation): a server that keeps every per-read timeout from firing."""

    def __init__(self, head, tail, every=0.3):
        self.tail, self.every = tail, every
        OneAnswer.__init__(self, head)

    def _answer(self, conn):
        import time

        conn.sendall(self.head)
        for i in range(len(self.tail)):
            conn.sendall(self.tail[i : i + 1])
            time.sleep(self.every)


BOUNDED_SCRIPT = """
import sys, time
from agent.mpy.http import Download
from agent.core.errors import UpdateError
d = Download(sys.argv[1], 100, 5, retries=0, max_time_s=2)
started = time.time()
try:
    print("read", d.read_exact(10, "header"))
except UpdateError as e:
    print("refused", e.reason, e.message)
print("took", time.time() - started)
"""


@pytest.mark.parametrize(
    "head, tail, said",
    [
        # The head never ends: a header line grows a byte at a time.
        (
            b"HTTP/1.1 200 OK\r\nX-Slow: ",
            b"a" * 200,
            "was not done after download max_time_s = 2 s",
        ),
        # The head is whole, the body comes a byte at a time.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            b"0123456789" * 2,
            "was not done after download max_time_s = 2 s",
        ),  # fmt: skip
    ],
    ids=["head", "body"],
)
def test_a_trickling_server_is_cut_at_max_time(micropython, tmp_path, head, tail, said):
    server = Trickle(head, tail)
    done = _run(micropython, tmp_path, server, BOUNDED_SCRIPT)
    assert "refused network" in done.stdout and said in done.stdout, done.stdout
    # Cut at the bound, not when the server ran out (60 s at this pace).
    assert float(done.stdout.split("\ntook ")[1]) < 10, done.stdout


def test_an_endless_status_line_is_refused_not_a_memory_error(micropython, tmp_path):
    server = OneAnswer(b"HTTP/1.1 200 " + b"A" * 50000)
    done = _run(micropython, tmp_path, server, DOWNLOAD_SCRIPT)
    assert "refused malformed HTTP header line longer than 1024 bytes" in done.stdout, done.stdout
