"""Sources: read a bundle sequentially from a path, file:// or http(s):// URL.

Invariant: a Source never hands out a byte beyond the bound set with `set_limit` (the length
the signed manifest allows: the endless-data attack stops there), and a resumed HTTP download
continues the very same entity at the very same offset (Range + If-Range, 206 with a matching
Content-Range and ETag) or fails; it never silently splices two different files. Foreign
errors (socket, ssl, http.client) all become NetworkError (Transient) or, for content that
contradicts the manifest, Truncated / PayloadMismatch (Rejected).

Retries: `retries` bounds consecutive failed attempts; a connection that delivered at least
PROGRESS_RESET bytes before dropping resets the count, so a long download over a flaky link
survives many drops while a server that never delivers gives up after `retries` back-offs.
Back-off is exponential with full jitter: sleep uniform(0, min(backoff_max_s, backoff_s*2^k)).

Stopping: a transfer ends when `[download] max_time_s` has passed since the source opened
(a timer, not a clock read per chunk) or when another thread calls `stop(error)` (the daemon
on cancel or at the job's deadline): the socket is shut down so a blocked read wakes, back-offs
are cut short, and the next read raises `error`. Local files: regular files only, opened
without blocking; job URLs (`open_job_source`) reach only http(s) and files under
`[download] file_dir`.
"""

import os
import random
import stat
import threading
import time

from agent.config import DOWNLOAD_DEFAULTS
from agent.core.errors import BadSource, NetworkError, PayloadMismatch, Truncated
from agent.transfer.stopper import Stopper  # noqa: F401 - also imported from here

PROGRESS_RESET = 64 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "charger-update-agent"
# http.client, ssl and socket (and the email parser behind http.client) are imported by the
# HTTP code below when it runs, not with this module: an install from a local file never
# needs them, and they are a fifth of its start-up (docs/transfer.md). So is urllib.parse
# (it imports ipaddress): a local path is never parsed as a URL.


def urlsplit(url):
    from urllib.parse import urlsplit as split

    return split(url)


def urljoin(base, url):
    from urllib.parse import urljoin as join

    return join(base, url)


def retryable():
    """Socket-level failures after which reconnecting with Range is worth a try (an `except`
    evaluates this only when something was raised)."""
    import http.client

    return (OSError, http.client.HTTPException)  # socket.timeout is an OSError


class _Retry(Exception):
    """Internal: this attempt failed in a way another attempt may fix."""


class RateLimiter:
    """Token bucket: `rate` bytes/s on average, bursts up to `burst` bytes. Tokens may go
    negative (a read can return more than asked); the debt is paid by sleeping."""

    def __init__(self, rate, burst, clock, sleep):
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.sleep = sleep
        self.tokens = float(burst)
        self.last = clock()

    def consume(self, n):
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)
            # The sleep refilled exactly the debt; account for it without reading the clock
            # twice, so a fake clock gives an exact schedule.
            self.last = self.clock()
            self.tokens = 0.0


class Source:
    """Sequential reader with a hard length bound. Subclasses implement `_raw_read(n)`."""

    size = None  # total bytes if known (file size, Content-Length)

    def __init__(self, location, settings, clock, sleep, progress, stopper=None):
        self.location = location
        self.settings = settings
        self.clock = clock
        self.stopped = None  # the error stop() asked for: every later read raises it
        self._woken = threading.Event()
        # Back-offs wait on an event, so a stop cuts them short.
        self.sleep = sleep or self._woken.wait
        self.progress = progress
        self.pos = 0
        self.limit = None
        rate = settings.get("max_rate") or 0
        self.limiter = None
        if rate > 0:
            burst = max(int(rate), 1)
            self.limiter = RateLimiter(rate, burst, clock, self.sleep)
        self._timer = None
        max_time = float(settings.get("max_time_s") or 0)
        if max_time > 0:
            # One timer per transfer, nothing per chunk: a trickling server cannot hold the
            # worker longer than this.
            late = NetworkError(
                "%s was not done after [download] max_time_s = %g s" % (location, max_time),
                hint="the server or link is too slow; raise max_time_s for slow links",
            )
            self._timer = threading.Timer(max_time, self.stop, (late,))
            self._timer.daemon = True
            self._timer.start()
        if stopper is not None:
            stopper.attach(self)

    def stop(self, error):
        """From any thread: end this transfer with `error` as soon as possible."""
        if self.stopped is None:
            self.stopped = error
        self._woken.set()
        self._interrupt()

    def _interrupt(self):
        """Wake a read blocked in the kernel (sockets); files never block."""

    def _check_stopped(self):
        if self.stopped is not None:
            raise self.stopped

    def set_limit(self, total):
        """Reading past `total` bytes (counted from the start) is an error from now on."""
        self.limit = int(total)
        self._check_size()

    def _check_size(self):
        if self.limit is None or self.size is None:
            return
        if self.size > self.limit:
            raise PayloadMismatch(
                "%s announces %d bytes but the manifest allows only %d"
                % (self.location, self.size, self.limit),
                hint="the server or file is not the signed bundle; refusing to download it",
            )
        if self.size < self.limit:
            raise Truncated(
                "%s has %d bytes but the manifest promises %d"
                % (self.location, self.size, self.limit),
                hint="the file is incomplete; download or copy it again",
            )

    def read(self, n):
        """Up to `n` bytes; b"" at the end. Raises Truncated if the data ends before the
        limit, PayloadMismatch if it goes on past it."""
        self._check_stopped()
        n = self._allowed(n)
        data = self._raw_read(n) if n else b""
        self._account(len(data))
        return data

    def readinto(self, view):
        """`read` into a writable buffer, without an intermediate bytes object: the number of
        bytes placed at its start, 0 at the end. Same bounds and errors as `read`."""
        self._check_stopped()
        n = self._allowed(len(view))
        got = self._raw_readinto(memoryview(view)[:n]) if n else 0
        self._account(got)
        return got

    def _allowed(self, n):
        """How much of `n` this read may take: 0 at the limit (after checking the source
        really ends there), at most one burst when rate-limited."""
        if self.limit is not None:
            room = self.limit - self.pos
            if room <= 0:
                self.expect_end()
                return 0
            n = min(n, room)
        if self.limiter is not None:
            n = max(1, min(n, int(self.limiter.burst)))
        return n

    def _account(self, got):
        if not got:
            if self.limit is not None and self.pos < self.limit:
                raise Truncated(
                    "%s ended after %d bytes; the manifest promises %d"
                    % (self.location, self.pos, self.limit),
                    hint="the file is incomplete; download or copy it again",
                )
            return
        self.pos += got
        if self.limiter is not None:
            self.limiter.consume(got)
        if self.progress is not None:
            self.progress.update(got)

    def expect_end(self):
        """At the limit: one more byte from the source means it sends more than allowed."""
        if self._raw_read(1):
            raise PayloadMismatch(
                "%s sent more than the %d bytes the manifest allows" % (self.location, self.limit),
                hint="endless-data attack or wrong file; the download was stopped at the bound",
            )

    def _raw_read(self, n):
        raise NotImplementedError

    def _raw_readinto(self, view):
        """Subclasses without a zero-copy path read and copy."""
        data = self._raw_read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self):
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FileSource(Source):
    """A bundle in a local regular file. Opened without blocking, so a FIFO or a device node
    never hangs the worker; anything but a regular file is refused (never retried)."""

    def __init__(self, path, settings, clock, sleep, progress, stopper=None, nofollow=False):
        Source.__init__(self, path, settings, clock, sleep, progress, stopper)
        try:
            fd, st = open_regular(path, nofollow)
        except BadSource:
            self.close()
            raise
        self._f = os.fdopen(fd, "rb", buffering=0)
        self.size = st.st_size

    def _raw_read(self, n):
        return self._f.read(n)

    def _raw_readinto(self, view):
        return self._f.readinto(view)

    def close(self):
        Source.close(self)
        if getattr(self, "_f", None) is not None:
            self._f.close()


def open_regular(path, nofollow=False):
    """(fd, stat) of a local bundle: opened without blocking, so a FIFO or a device node never
    hangs the worker; anything but a regular file, or a file that cannot be opened, is
    BadSource (never retried)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise BadSource(
            "cannot open bundle %s: %s" % (path, e.strerror or e),
            hint="check the path; a missing file does not appear by retrying",
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadSource(
            "bundle %s is not a regular file" % path, hint="give the path of a bundle file"
        )
    return fd, st


class HttpSource(Source):
    def __init__(self, url, settings, clock, sleep, rng, progress, stopper=None, open_now=True):
        Source.__init__(self, url, settings, clock, sleep, progress, stopper)
        self.url = url
        self.rng = rng
        self.timeout = float(settings["timeout_s"])
        self.retries = int(settings["retries"])
        self.failures = 0
        self.since_failure = 0
        self.validator = None  # strong ETag, else Last-Modified, of the first response
        self.etag = None
        self.requests = 0
        self._conn = None
        self._sock = None  # the connection's socket, for stop() from another thread
        self._resp = None
        self._ssl = None
        try:
            if urlsplit(url).scheme == "https":
                import ssl

                self._ssl = ssl.create_default_context(cafile=settings.get("ca_file") or None)
            if open_now:  # fail early: bad URL, unknown CA, 404 show up before payload work
                self._open()
        except BaseException:
            self.close()  # no timer or socket outlives a source that never opened
            raise

    # -- reading ------------------------------------------------------------------------------

    def _raw_read(self, n):
        return self._retrying(lambda resp: resp.read(n), len)

    def _raw_readinto(self, view):
        return self._retrying(lambda resp: resp.readinto(view), int)

    def _retrying(self, read, count):
        """read(response) once it succeeds, reconnecting with Range after a drop; `count`
        gives the bytes a result holds (0 only at the true end)."""
        while True:
            if self._resp is None:
                self._open()
            try:
                result = read(self._resp)
            except retryable() as e:
                self._failed("connection dropped at byte %d: %s" % (self.pos, _describe(e)))
                continue
            self._check_stopped()  # bytes that raced a stop are not handed out
            got = count(result)
            if got:
                self.since_failure += got
                if self.since_failure >= PROGRESS_RESET:
                    self.failures = 0
                return result
            if self.size is not None and self.pos < self.size:
                # Close-delimited or chunked body that ended early: same as a drop.
                self._failed("connection closed at byte %d of %d" % (self.pos, self.size))
                continue
            return result

    def _open(self):
        while True:
            try:
                self._attempt()
                return
            except _Retry as e:
                self._failed(str(e))
            except retryable() as e:
                import ssl

                if isinstance(e, ssl.SSLCertVerificationError):
                    raise NetworkError(
                        "TLS certificate of %s not trusted: %s" % (self.url, e.verify_message),
                        hint="set [download] ca_file to the CA that signed the server's "
                        "certificate; verification is never turned off",
                    ) from None
                self._failed("cannot fetch %s: %s" % (self.url, _describe(e)))

    def _failed(self, why):
        """Drop the connection, count the failure, back off (or give up)."""
        self._drop()
        self._check_stopped()  # a stopped transfer's dropped socket is no failure to retry
        self.failures += 1
        self.since_failure = 0
        if self.failures > self.retries:
            raise NetworkError(
                "download of %s failed after %d retries: %s" % (self.location, self.retries, why),
                hint="check the network and the server; the install can be retried later",
            )
        cap = min(
            float(self.settings["backoff_max_s"]),
            self.settings["backoff_s"] * 2 ** (self.failures - 1),
        )
        self.sleep(self.rng.uniform(0, cap))
        self._check_stopped()

    def _interrupt(self):
        sock = getattr(self, "_sock", None)  # None until connected (or before __init__ ends)
        if sock is None:
            return
        import socket

        try:
            # The plain socket's shutdown, also under TLS: the blocked read gets EOF at once.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def _drop(self):
        if self._resp is not None:
            self._resp.close()
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._sock = None
        self._resp = None

    # -- one request --------------------------------------------------------------------------

    def _attempt(self):
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._request(url)
            if resp.status in (301, 302, 303, 307, 308):
                url = self._redirect(url, resp)
                continue
            self._accept(resp)
            return
        raise NetworkError("too many redirects from %s" % self.url)

    def _request(self, url, headers=None):
        """GET url on a new connection; `headers` replaces the resume headers (ranges.py)."""
        self._drop()
        self._check_stopped()
        import http.client
        import ssl

        parts = urlsplit(url)
        if not parts.hostname:
            raise NetworkError("URL %s names no host" % (url,))
        if parts.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context(cafile=self.settings.get("ca_file") or None)
            conn = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        self._conn = conn
        extra = headers
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if extra is not None:
            headers.update(extra)
        elif self.pos:
            headers["Range"] = "bytes=%d-" % self.pos
            if self.validator:
                headers["If-Range"] = self.validator
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.requests += 1
        conn.connect()
        # Kept here: http.client hands the socket to the response (HTTP/1.0, close).
        self._sock = conn.sock
        self._check_stopped()  # a stop during the connect found no socket to shut down
        conn.request("GET", path, headers=headers)
        return conn.getresponse()

    def _redirect(self, url, resp):
        target = resp.getheader("Location")
        resp.read()
        if not target:
            raise NetworkError("redirect without Location from %s" % url)
        target = urljoin(url, target)
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            # Only http(s) is followed: never a local file, never ftp:// spoken as HTTP.
            raise NetworkError(
                "%s redirects to %r, which is not an http(s) URL; not following it"
                % (url, target[:200]),
                hint="the server's redirect is wrong; fix it or give the final https:// URL",
            )
        if urlsplit(url).scheme == "https" and scheme != "https":
            raise NetworkError(
                "%s redirects to plain http (%s); refusing the downgrade" % (url, target)
            )
        self.url = target  # resume against where the data really is
        return target

    def _accept(self, resp):
        status = resp.status
        if status in (408, 429) or 500 <= status <= 599:
            raise _Retry("HTTP %d %s from %s" % (status, resp.reason, self.url))
        if status == 200:
            self._accept_full(resp)
        elif status == 206:
            self._accept_partial(resp)
        else:
            raise NetworkError(
                "HTTP %d %s from %s" % (status, resp.reason, self.url),
                hint="check the URL in the update job",
            )
        self._resp = resp

    def _accept_full(self, resp):
        if self.pos:
            # Range ignored, or If-Range said the file changed: the bytes already handed
            # out cannot be taken back, so this download cannot continue.
            raise NetworkError(
                "%s answered the resume at byte %d with the whole file (HTTP 200)"
                % (self.url, self.pos),
                hint="the server ignores Range or the file changed during the download; "
                "the install will start over",
            )
        etag = resp.getheader("ETag")
        self.etag = etag
        if etag and not etag.startswith("W/"):
            self.validator = etag  # weak ETags are not allowed in If-Range
        else:
            self.validator = resp.getheader("Last-Modified")
        self.size = _ascii_int(resp.getheader("Content-Length"))
        self._check_size()

    def _accept_partial(self, resp):
        start, total = _content_range(resp.getheader("Content-Range"))
        if start != self.pos or (self.size is not None and total not in (None, self.size)):
            raise NetworkError(
                "%s resumed at the wrong place (Content-Range %s, wanted byte %d of %s)"
                % (self.url, resp.getheader("Content-Range"), self.pos, self.size)
            )
        etag = resp.getheader("ETag")
        if self.etag and etag and etag != self.etag:
            raise NetworkError(
                "%s changed during the download (ETag %s, was %s)" % (self.url, etag, self.etag),
                hint="the install will start over with the new file",
            )

    def close(self):
        Source.close(self)
        self._drop()


def _ascii_int(text):
    """A header's non-negative integer from ASCII digits only (str.isdigit and int() also
    take '²', Arabic-Indic digits, '_' and spaces), or None."""
    text = (text or "").strip()
    if not text or len(text) > 20 or not all("0" <= c <= "9" for c in text):
        return None
    return int(text)


def _content_range(value):
    """'bytes 100-199/1000' -> (100, 1000); total None for '*'."""
    try:
        unit, rest = value.split(" ", 1)
        span, total_text = rest.split("/", 1)
        start = _ascii_int(span.split("-", 1)[0])
        wildcard = total_text.strip() == "*"
        total = None if wildcard else _ascii_int(total_text)
        if unit != "bytes" or start is None or (total is None and not wildcard):
            raise ValueError(unit)
        return start, total
    except (AttributeError, ValueError):
        raise NetworkError("bad Content-Range %r in a resumed download" % (value,)) from None


def _describe(e):
    return "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__


def open_source(
    location, settings=None, clock=None, sleep=None, rng=None, progress=None, stopper=None
):
    """A Source for a path, file://, http:// or https:// location named by the operator (the
    command line). `settings` is the [download] config table; clock/sleep/rng are
    injectable so tests never wait; `stopper` (a Stopper) lets another thread end it."""
    merged = dict(DOWNLOAD_DEFAULTS)
    merged.update(settings or {})
    clock = clock or time.monotonic
    rng = rng or random.Random()
    scheme = urlsplit(location).scheme.lower() if "://" in location else ""
    if scheme in ("http", "https"):
        return HttpSource(location, merged, clock, sleep, rng, progress, stopper)
    if scheme == "file":
        location = _file_url_path(location)
    elif scheme:
        raise BadSource(
            "unsupported source %s" % location, hint="use a path, file://, http:// or https://"
        )
    return FileSource(location, merged, clock, sleep, progress, stopper)


def open_job_source(url, settings=None, stopper=None, **kw):
    """A Source for a job's URL, which comes from the network: http(s)://, or a file: URL
    naming a regular file under `[download] file_dir` (file: URLs are off without it).
    Whether a file outside that directory exists is never told."""
    merged = dict(DOWNLOAD_DEFAULTS)
    merged.update(settings or {})
    path = job_file_path(url, merged)
    if path is None:
        return open_source(url, merged, stopper=stopper, **kw)
    clock = kw.get("clock") or time.monotonic
    return FileSource(
        path, merged, clock, kw.get("sleep"), kw.get("progress"), stopper, nofollow=True
    )


def job_file_path(url, settings):
    """None for an http(s) job URL; for a file: one, the real path it names, which lies under
    `[download] file_dir`; BadSource for anything else (open_job_source, ranges.open_job_ranges)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme != "file":
        raise BadSource(
            "job URL %s is not http(s) or file:" % (url[:200],), hint="use an https:// URL"
        )
    directory = (settings or {}).get("file_dir") or ""
    if not directory:
        raise BadSource(
            "file: job URLs are not allowed on this charger",
            hint="serve the bundle over https, or set [download] file_dir to the directory "
            "bundles are dropped into",
        )
    path = os.path.realpath(_file_url_path(url))
    base = os.path.realpath(directory)
    if not path.startswith(base.rstrip("/") + "/"):
        raise BadSource(
            "job URL %s is not a file under [download] file_dir" % (url[:200],),
            hint="file: job URLs may only name bundles in %s" % base,
        )
    return path


def _file_url_path(location):
    from urllib.request import url2pathname  # heavy import, only for file: URLs

    parts = urlsplit(location)
    if parts.netloc not in ("", "localhost"):
        raise BadSource(  # a wrong location never starts working: do not retry it
            "file:// URL with a remote host is not supported: %s" % (location[:200],),
            hint="use file:///path or an http(s):// URL",
        )
    return url2pathname(parts.path)
