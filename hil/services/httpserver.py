"""A real HTTP(S) server on 127.0.0.1 that serves files with Range/ETag, and misbehaves on
purpose when a test asks it to (see Faults). Used by the transfer tests and the benchmark.

Invariant: with no faults set it is a correct HTTP/1.0 file server (200, 206 with
Content-Range, If-Range honoured, strong ETag); every fault is opt-in and counted, and every
request is recorded so tests can assert what the client actually asked for.
"""

import http.server
import os
import re
import ssl
import threading
import time

CHUNK = 256 * 1024


class Faults:
    """Misbehaviours, each off by default. `*_times` counts how many responses get it."""

    def __init__(self):
        self.drop_after = None  # close the connection after this many body bytes
        self.drop_times = 0
        self.stall_after = None  # stop sending after this many body bytes until `release`
        self.stall_times = 0
        self.release = threading.Event()
        self.fail_first = 0  # answer this many requests with 503
        self.ignore_range = False  # answer Range requests with 200 and the whole file
        self.wrong_etag_on_resume = False  # 206 with a different ETag
        self.endless = False  # no Content-Length, data never ends
        self.declare_length = None  # Content-Length to announce instead of the real one
        self.redirects = {}  # url path -> Location to answer with 302
        self.trickle_s = None  # send the body one byte per this many seconds, until `release`
        self.trickle_from = 0  # only answers starting at or after this byte trickle
        self.failed = threading.Event()  # set when a fail_first answer (503) went out
        self.trickling = threading.Event()  # set when a trickled body starts
        self.hung_up = threading.Event()  # set when a client hangs up on a trickled body
        # Requests for several ranges: "multipart" (RFC 9110 multipart/byteranges), "first"
        # (only the first range, as some CDNs do) or "whole" (200 and the whole file)
        self.multirange = "multipart"
        self.lie_after = None  # range answers starting at or after it: first byte flipped


class FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files, ssl_context=None, host="127.0.0.1", port=0):
        http.server.ThreadingHTTPServer.__init__(self, (host, port), Handler)
        self.files = files  # url path -> bytes or a filesystem path
        self.ssl_context = ssl_context
        self.faults = Faults()
        self.requests = []  # dicts: path, range, if_range, at (monotonic), status
        self.body_bytes = 0  # bytes of response bodies sent (what the link carried)
        self.lock = threading.Lock()
        self.thread = None

    @property
    def base_url(self):
        scheme = "https" if self.ssl_context else "http"
        return "%s://%s:%d" % (scheme, self.server_address[0], self.server_address[1])

    def url(self, name):
        return "%s/%s" % (self.base_url, name.lstrip("/"))

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.ssl_context is not None:
            # The handshake happens in the handler thread, so a client that rejects our
            # certificate cannot block the accept loop.
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, addr

    def take(self, name):
        """Consume one use of a counted fault; True if this response gets it."""
        with self.lock:
            left = getattr(self.faults, name)
            if left > 0:
                setattr(self.faults, name, left - 1)
                return True
            return False

    def start(self):
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.faults.release.set()
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address):
        pass  # clients hanging up mid-body are the point of most tests


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "transfer-test"

    def log_message(self, *args):
        pass

    def setup(self):
        if self.server.ssl_context is not None:
            self.request.do_handshake()
        http.server.BaseHTTPRequestHandler.setup(self)

    def do_GET(self):
        srv = self.server
        record = {
            "path": self.path,
            "range": self.headers.get("Range"),
            "if_range": self.headers.get("If-Range"),
            "at": time.monotonic(),
        }
        with srv.lock:
            srv.requests.append(record)
        target = srv.faults.redirects.get(self.path.lstrip("/"))
        if target is not None:
            record["status"] = 302
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.take("fail_first"):
            record["status"] = 503
            self.send_error(503, "busy, try later")
            srv.faults.failed.set()
            return
        body = srv.files.get(self.path.lstrip("/"))
        if body is None:
            record["status"] = 404
            return self.send_error(404)
        size = len(body) if isinstance(body, bytes) else os.path.getsize(body)
        etag = '"%x-%d"' % (size, hash(self.path) & 0xFFFF)
        spans = self._spans(size, etag, srv.faults)
        if spans is not None and len(spans) > 1:
            return self._send_multi(record, body, size, etag, spans)
        start = self._range_start(etag, srv.faults)
        end = size
        if spans is not None:
            start, end = spans[0][0], spans[0][1] + 1
        if srv.faults.endless:
            return self._send_endless(record)
        record["status"] = 206 if start or end < size else 200
        self.send_response(record["status"])
        self.send_header("Accept-Ranges", "bytes")
        if start and srv.faults.wrong_etag_on_resume:
            etag = '"changed"'
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", "Tue, 24 Nov 2026 00:00:00 GMT")
        length = end - start
        if srv.faults.declare_length is not None:
            length = srv.faults.declare_length
        self.send_header("Content-Length", str(length))
        if record["status"] == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end - 1, size))
        self.end_headers()
        self._send_body(body, start, end)

    def _spans(self, size, etag, faults):
        """[(first, last)] of a `bytes=a-b,c-d` Range header (None: no such header, or the
        server ignores it; `bytes=N-` stays with _range_start, as before)."""
        value = self.headers.get("Range") or ""
        if not re.match(r"bytes=\d+-\d+(,\s*\d+-\d+)*$", value) or faults.ignore_range:
            return None
        if_range = self.headers.get("If-Range")
        if if_range and if_range != etag and not if_range.endswith("GMT"):
            return None
        spans = []
        for part in value[6:].split(","):
            first, last = (int(x) for x in part.strip().split("-"))
            if first <= last and first < size:
                spans.append((first, min(last, size - 1)))
        if len(spans) > 1 and faults.multirange == "first":
            spans = spans[:1]
        if len(spans) > 1 and faults.multirange == "whole":
            return None
        return spans or None

    def _send_multi(self, record, body, size, etag, spans):
        boundary = "CUBNDL_BOUNDARY"
        parts = []
        for first, last in spans:
            head = "--%s\r\nContent-Type: application/octet-stream\r\n" % boundary
            head += "Content-Range: bytes %d-%d/%d\r\n\r\n" % (first, last, size)
            parts.append((head.encode(), first, last))
        tail = ("--%s--\r\n" % boundary).encode()
        length = sum(len(h) + last + 1 - first + 2 for h, first, last in parts) + len(tail)
        record["status"] = 206
        self.send_response(206)
        self.send_header("Content-Type", "multipart/byteranges; boundary=" + boundary)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        budget = None  # a drop cuts the multipart body too, part headers counted
        if self.server.faults.drop_after is not None and self.server.take("drop_times"):
            budget = self.server.faults.drop_after
        out = b""
        with _opener(body) as read:
            for head, first, last in parts:
                out += head + self._maybe_lie(first, read(first, last + 1 - first)) + b"\r\n"
            out += tail
        if budget is not None:
            out = out[:budget]
        self.wfile.write(out)
        with self.server.lock:
            self.server.body_bytes += len(out)
        self.close_connection = True

    def _maybe_lie(self, start, data, first=True):
        after = self.server.faults.lie_after
        if after is None or start < after or not first or not data:
            return data
        return bytes([data[0] ^ 0xFF]) + data[1:]

    def _range_start(self, etag, faults):
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if not match or faults.ignore_range:
            return 0
        if_range = self.headers.get("If-Range")
        if if_range and if_range != etag and not if_range.endswith("GMT"):
            return 0  # the client's copy is of another version: send the whole file
        return int(match.group(1))

    def _send_body(self, body, start, size):
        """Bytes [start, size) of the body (`size` is where this answer ends)."""
        srv = self.server
        with srv.lock:
            srv.body_bytes += size - start
        if srv.faults.trickle_s is not None and start >= srv.faults.trickle_from:
            return self._trickle(body, start, size)
        budget = None
        if srv.faults.drop_after is not None and srv.take("drop_times"):
            budget = ("drop", srv.faults.drop_after)
        elif srv.faults.stall_after is not None and srv.take("stall_times"):
            budget = ("stall", srv.faults.stall_after)
        lying = srv.faults.lie_after is not None
        if budget is None and not lying and not isinstance(body, bytes) and srv.ssl_context is None:
            # what a production server does (nginx, sendfile on): the kernel copies the file
            # to the socket, so the server's CPU does not skew the downloads measured against it
            self.wfile.flush()
            with open(body, "rb") as f:
                self.request.sendfile(f, offset=start, count=size - start)
            self.close_connection = True
            return
        pos, sent = start, 0
        with _opener(body) as f:
            while pos < size:
                n = min(CHUNK, size - pos)
                if budget is not None:
                    n = min(n, budget[1] - sent)
                    if n <= 0:
                        break
                data = self._maybe_lie(pos, f(pos, n), pos == start)
                self.wfile.write(data)
                pos += n
                sent += n
        if budget is not None and budget[0] == "stall" and pos < size:
            self.wfile.flush()
            srv.faults.release.wait(30)
        self.close_connection = True

    def _trickle(self, body, start, size):
        """A server that keeps the connection alive with a byte now and then (slowloris in
        reverse): per-read timeouts never fire, only an overall bound stops the client."""
        faults = self.server.faults
        faults.trickling.set()
        try:
            with _opener(body) as f:
                for pos in range(start, size):
                    self.wfile.write(f(pos, 1))
                    self.wfile.flush()
                    if faults.release.wait(faults.trickle_s):
                        break
        except OSError:
            faults.hung_up.set()
        self.close_connection = True

    def _send_endless(self, record):
        record["status"] = 200
        self.send_response(200)
        self.end_headers()  # no Content-Length: close-delimited, never closed by us
        block = b"\xaa" * CHUNK
        try:
            while not self.server.faults.release.is_set():
                self.wfile.write(block)
        except OSError:
            pass  # the client hung up: what a correct client does


class _opener:
    """Random access to bytes or a file, as a callable (pos, n) -> bytes."""

    def __init__(self, body):
        self.body = body
        self.f = None

    def __enter__(self):
        if isinstance(self.body, bytes):
            return lambda pos, n: self.body[pos : pos + n]
        self.f = open(self.body, "rb")
        return lambda pos, n: os.pread(self.f.fileno(), n, pos)

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()


def make_tls(tmpdir):
    """A throwaway CA and a server certificate for 127.0.0.1, written as PEM files.
    Returns (server ssl context, path of the CA certificate)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "transfer test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = os.path.join(tmpdir, "ca.pem")
    cert_path = os.path.join(tmpdir, "server.pem")
    key_path = os.path.join(tmpdir, "server.key")
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx, ca_path
