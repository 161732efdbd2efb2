"""A streaming HTTP/1.1 download for the board: Range resume, a hard length bound, small buffers.

`Download(url, limit).readinto(buf)` fills the caller's buffer with the body in order (no
allocation per read), never more than `limit` bytes in all. When the connection drops
mid-body it reconnects and asks for the rest with `Range: bytes=POS-` and `If-Range: ETAG`, up
to `retries` times; a server that ignores the range is skipped forward, one whose resource
changed (ETag differs) is an error.

Invariant: a transport failure raises NetworkError (transient, retried by the journey), a
response that breaks the protocol or the bound raises Truncated or MalformedBundle (rejected).
"""

import select
import socket
import time

from agent.core.errors import ConfigError, MalformedBundle, NetworkError, Truncated
from agent.core.text import is_digits

MAX_HEADER_LINES = 64
MAX_LINE = 1024
WAIT_MS = 1000  # while no body bytes arrive: MQTT is polled (on_wait) this often
MAX_SPAN_MS = 5 * 86400 * 1000


def split_url(url):
    if url.startswith("https://"):
        scheme, rest, port = "https", url[8:], 443
    elif url.startswith("http://"):
        scheme, rest, port = "http", url[7:], 80
    else:
        raise MalformedBundle("unsupported URL scheme in %r" % url[:40])
    host, _, path = rest.partition("/")
    if ":" in host:
        host, p = host.rsplit(":", 1)
        if not p.isdigit():
            raise MalformedBundle("bad port in URL %r" % url[:80])
        port = int(p)
    return scheme, host, port, "/" + path


class Download:
    def __init__(self, url, limit, timeout_s=10, retries=5, on_wait=None, tls=None,
                 max_time_s=0, room=None):  # fmt: skip
        """tls: for https, a function returning the board's download TLS context (or None
        when the board has none configured), see Agent.download_tls. max_time_s: the whole
        transfer's bound (0: none), checked before every read and while waiting for the
        socket, so a server that trickles cannot hold the board past it. room: a list
        whose buffer (more than MAX_LINE bytes) the first response's head is read into, then
        let go: the installer's room for the inflater (at 96K-98K no 1,025 bytes in one
        piece were left for the head of the install's stream). Only this module's frames
        take the buffer out of the list: a stale slot in the caller's frame would keep it."""
        self.scheme, self.host, self.port, self.path = split_url(url)
        self.room = room
        # ticks, not time.time(): a float is a heap object on most ports, and these are read
        # at every read of a transfer. ticks_diff is right for spans up to about 6 days: a
        # longer max_time_s counts as 5 days.
        self.max_time_s = max_time_s
        self.max_ms = min(int(max_time_s * 1000), MAX_SPAN_MS)
        self.timeout_ms = int(timeout_s * 1000)
        self.started = time.ticks_ms()
        self.tls = tls
        self.limit = limit
        self.timeout_s = timeout_s
        self.retries = retries
        # Called between attempts and while no body bytes arrive: the agent polls MQTT there,
        # and a cancel or the job's deadline ends the transfer (Agent.poller).
        self.on_wait = on_wait
        self.pos = 0
        self.total = None
        self.etag = None
        self.sock = None
        self.resumes = 0
        self.poller = self.raw = None
        self._skip = 0

    # -- connection ---------------------------------------------------------------------

    def _connect(self):
        ctx = None
        if self.scheme == "https":
            ctx = self.tls() if self.tls is not None else None
            if ctx is None:
                raise ConfigError("download ca_file is not set: the board has no system CA "
                                  "store, so https cannot be verified (it is never turned "
                                  "off); provision the CA that signed %s's certificate"
                                  % self.host)  # fmt: skip
        addr = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket()
        self.sock = self.raw = sock  # closed by close() whatever fails from here on
        try:
            sock.settimeout(self.timeout_s)
            sock.connect(addr)
            # Everything after the TCP connect goes without blocking, the TLS handshake
            # included (driven by the request's first write): while nothing moves, the board
            # polls MQTT (a cancel, the job's deadline) and checks max_time_s, however
            # slowly the other end trickles its handshake, head or body.
            sock.setblocking(False)
            if ctx is not None:
                from agent.mpy import tls

                sock = self.sock = tls.wrap_lazy(ctx, sock, self.host)
            self.poller = select.poll()
            self.poller.register(sock, select.POLLIN | select.POLLOUT)
            lines = ["GET %s HTTP/1.1" % self.path, "Host: %s" % self.host,
                     "User-Agent: charger-update-mpy", "Connection: close"]  # fmt: skip
            if self.pos:
                lines.append("Range: bytes=%d-" % self.pos)
                if self.etag:
                    lines.append("If-Range: %s" % self.etag)
            self._send(("\r\n".join(lines) + "\r\n\r\n").encode())
            self.poller.modify(sock, select.POLLIN)
            status, headers = self._head()
            self._accept(status, headers)
        except BaseException:
            self.close()
            raise

    def _send(self, data):
        """`data` written without blocking; over TLS its first write makes the handshake. The
        handshake and the request together get timeout_s (OSError after, retried as a drop)."""
        started, sent = time.ticks_ms(), 0
        while sent < len(data):
            try:
                n = self.sock.write(data[sent:] if sent else data)
            except ValueError as e:  # only a TLS socket raises it: tls is imported
                from agent.mpy import tls

                raise tls.untrusted(self.host, e)
            if n:
                sent += n
                continue
            self._wait(started, "no connection to %s within %s s")

    def _head(self):
        scratch = self.room[0] if self.room else None  # lent once (__init__)
        self.room = None
        if scratch is None or len(scratch) <= MAX_LINE:
            scratch = bytearray(MAX_LINE + 1)  # one line at a time, never longer
        line = self._readline(scratch)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise NetworkError("no HTTP status line from %s" % self.host)
        headers = {}
        for _ in range(MAX_HEADER_LINES):
            line = self._readline(scratch)
            if line in (b"\r\n", b"\n", b""):
                return int(parts[1]), headers
            try:
                text = line.decode()
            except UnicodeError:  # a server's bytes, not ours to crash on
                raise MalformedBundle("HTTP header line is not UTF-8 from %s" % self.host)
            name, _, value = text.partition(":")
            headers[name.strip().lower()] = value.strip()
        raise MalformedBundle("more than %d HTTP header lines" % MAX_HEADER_LINES)

    def _readline(self, scratch):
        """The next line of the head, its newline included (b"" at the end of the stream),
        read byte by byte into `scratch`; MalformedBundle past MAX_LINE bytes."""
        one = memoryview(scratch)[MAX_LINE:]  # the last byte doubles as the read buffer
        n = 0
        while True:
            if not self._recv(one, 1):
                break
            if n == MAX_LINE:
                raise MalformedBundle("HTTP header line longer than %d bytes" % MAX_LINE)
            scratch[n] = one[0]
            n += 1
            if one[0] == 10:
                break
        return bytes(memoryview(scratch)[:n])

    def _accept(self, status, headers):
        if status >= 500 or status == 429:
            raise NetworkError("server answered %d" % status)
        if status not in (200, 206):
            raise MalformedBundle("server answered %d for %s" % (status, self.path))
        length = headers.get("content-length", "")
        if not is_digits(length):
            raise MalformedBundle("response has no Content-Length")
        etag = headers.get("etag")
        if status == 206:
            start = headers.get("content-range", "")[6:].split("-", 1)[0]
            if not is_digits(start) or int(start) != self.pos:
                raise MalformedBundle("Content-Range does not start at %d" % self.pos)
            if self.etag and etag and etag != self.etag:
                raise MalformedBundle("the file changed on the server during the download")
            total = self.pos + int(length)
        else:
            total = int(length)
            self._skip = self.pos  # range ignored: the body starts at 0 again
        if self.total is not None and total != self.total:
            raise MalformedBundle("the file changed size on the server during the download")
        self.total, self.etag = total, etag or self.etag

    # -- reading ------------------------------------------------------------------------

    def readinto(self, buf):
        """Fill the start of `buf` (bytearray or memoryview) with the next bytes of the body;
        returns how many (0 at the end), never past `limit`. No allocation per call."""
        n = min(len(buf), self.limit - self.pos)
        if n <= 0:
            return 0
        for attempt in range(self.retries + 1):
            self._check_time()
            try:
                if self.sock is None:
                    self._skip = 0
                    self._connect()
                    self._skip_to_pos()
                if self.total is not None and self.pos >= self.total:
                    return 0
                got = self._recv(buf, n)
                if not got:
                    raise OSError(104, "connection closed after %d bytes" % self.pos)
                self.pos += got
                return got
            except OSError as e:
                self.close()
                if attempt == self.retries:
                    raise NetworkError("download from %s failed: %s" % (self.host, e))
                self.resumes += 1
                if self.on_wait is not None:
                    self.on_wait()
        return 0

    def _recv(self, buf, n):
        """What arrived of the next n bytes of the answer (at least one; 0 at the end of
        the stream), waiting at most timeout_s of silence (OSError then, retried as a drop)."""
        silent_since = time.ticks_ms()
        while True:
            got = self.sock.readinto(buf, n)
            if got is not None:
                return got
            self._wait(silent_since, "no data from %s for %s s")

    def _wait(self, since, why):
        """Nothing moved: check max_time_s, and timeout_s since `since` (OSError `why` %
        (host, timeout_s) then, retried as a drop); wait for the socket at most WAIT_MS, then
        poll MQTT (on_wait)."""
        self._check_time()
        if time.ticks_diff(time.ticks_ms(), since) >= self.timeout_ms:
            raise OSError(110, why % (self.host, self.timeout_s))
        self.poller.poll(WAIT_MS)
        if self.on_wait is not None:
            self.on_wait()

    def _check_time(self):
        if self.max_ms and time.ticks_diff(time.ticks_ms(), self.started) >= self.max_ms:
            self.close()
            raise NetworkError("%s was not done after download max_time_s = %g s; the server "
                               "or link is too slow: raise max_time_s for slow links"
                               % (self.path, self.max_time_s))  # fmt: skip

    def _skip_to_pos(self):
        """A server that ignored our Range sends from byte 0: drop what we had already."""
        scratch = bytearray(256)
        while self._skip:
            self._check_time()
            got = self._recv(scratch, min(self._skip, len(scratch)))
            if not got:
                raise OSError(104, "connection closed while skipping to %d" % self.pos)
            self._skip -= got

    def read(self, n):
        """Up to n bytes (b"" at the end); never past `limit`."""
        buf = bytearray(max(0, min(n, self.limit - self.pos)))
        got = self.readinto(buf) if buf else 0
        return bytes(buf) if got == len(buf) else bytes(buf[:got])

    def read_exact(self, n, what):
        parts, got = [], 0
        while got < n:
            block = self.read(min(n - got, 4096))
            if not block:
                raise Truncated("bundle ends inside the %s: %d of %d bytes" % (what, got, n))
            parts.append(block)
            got += len(block)
        return b"".join(parts)

    def close(self):
        # The TCP socket too: closing a TLS socket whose handshake failed leaves it open.
        for sock in (self.sock, self.raw):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self.sock = self.raw = self.poller = None
