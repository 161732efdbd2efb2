"""Random access to a bundle: byte ranges of a file, or HTTP Range requests on the HttpSource
machinery (TLS, redirects, back-off, rate limit) with several ranges per request where the
server answers multipart/byteranges, and one range per request where it does not.

Invariant: `read_ranges(spans)` yields exactly the bytes of the requested spans, in order,
each piece checked against the Content-Range the server named, or raises; a drop mid-answer
re-requests only what is still missing. It never holds more than one batch (MAX_BATCH
bytes) in memory. A server that ignores Range altogether raises RangesUnsupported on the
first request, so the caller can fall back to a full download. What the bytes mean is the
caller's to check (agent/bundle/chunked.py checks every block against the signed index).

The first request (`read_start`) asks for the bundle's first HEAD_BYTES, which tell its
format: what it brought is never fetched again, neither by later ranges nor by `stream()`,
which continues a format-1 bundle from there (or reads on in a 200 answer), so learning
the format costs no request of its own.
"""

import os
import random
import time

from agent.config import DOWNLOAD_DEFAULTS
from agent.core.errors import BadSource, NetworkError
from agent.transfer.fetch import (
    PROGRESS_RESET,
    HttpSource,
    _ascii_int,
    _describe,
    _file_url_path,
    job_file_path,
    open_regular,
    retryable,
    urlsplit,
)

MAX_RANGES = 64  # per request: the Range header stays well under servers' 8 KiB header limits
MAX_BATCH = 4 << 20  # bytes asked for in one request
MAX_LINE = 1024  # a multipart header line
# The first request: the 12-byte header and an envelope of a usual size. Asking for more
# would fetch payload units a delta install may not need; the rest of a long envelope and
# the chunk indexes take one more request.
HEAD_BYTES = 4096


class RangesUnsupported(Exception):
    """The server answers Range requests with the whole file (or the file is a stream)."""


def split(spans, limit=MAX_BATCH):
    """(start, length) spans cut so that none is longer than `limit`."""
    out = []
    for start, length in spans:
        while length > limit:
            out.append((start, limit))
            start, length = start + limit, length - limit
        if length:
            out.append((start, length))
    return out


def batches(spans, multi):
    """Groups of spans for one request each: up to MAX_RANGES and MAX_BATCH bytes (one
    span per request when the server takes no multi-range requests)."""
    group, size = [], 0
    for span in split(spans):
        if group and (not multi or len(group) == MAX_RANGES or size + span[1] > MAX_BATCH):
            yield group
            group, size = [], 0
        group.append(span)
        size += span[1]
    if group:
        yield group


class FileRanges:
    """Ranges of a local bundle file (pread): a regular file only, opened without blocking
    (fetch.open_regular); a stopper's stop ends the reads at the next span."""

    def __init__(self, path, nofollow=False, stopper=None):
        self.fd, st = open_regular(path, nofollow)
        self.total = st.st_size
        self.received = 0
        self.requests = 0
        self.stopper = stopper

    def read_start(self, n):
        return b"".join(data for _, data in self.read_ranges([(0, min(n, self.total))]))

    def stream(self):
        """None: a file is streamed by opening it again (agent/transfer/fetch.py)."""
        return None

    def read_ranges(self, spans):
        for start, length in split(spans):
            if self.stopper is not None and self.stopper.error is not None:
                raise self.stopper.error
            data = os.pread(self.fd, length, start)
            if len(data) != length:
                raise NetworkError("bundle ends at byte %d, before %d" % (start + len(data),
                                   start + length))  # fmt: skip
            self.received += length
            yield start, data

    def close(self):
        os.close(self.fd)


class HttpRanges(HttpSource):
    """Range requests for one bundle URL. `received` counts the body bytes the link carried
    (multipart headers included): what a charger pays for."""

    def __init__(self, url, settings, clock, sleep, rng, progress=None, stopper=None):
        HttpSource.__init__(self, url, settings, clock, sleep, rng, progress, stopper,
                            open_now=False)  # fmt: skip
        self.multi = True  # until the server shows otherwise
        self.received = 0
        self.sizes = []  # the totals Content-Range named: the bundle's size
        self.start = b""  # the bundle's first bytes, from read_start: never fetched again

    @property
    def total(self):
        """The bundle's size as the server tells it (None before the first answer)."""
        if self.sizes and any(s != self.sizes[0] for s in self.sizes):
            raise NetworkError("%s changed its size during the download" % self.url)
        return self.sizes[0] if self.sizes else None

    def read_ranges(self, spans):
        todo = []
        for start, length in spans:
            have = min(start + length, len(self.start)) - start
            if have > 0 and not todo:  # pieces go out in order: memory first, then the link
                yield start, self.start[start : start + have]
                start, length = start + have, length - have
            if length:
                todo.append((start, length))
        for batch in batches(todo, self.multi):
            got = self._fetch(batch)
            for span in batch:
                yield span[0], bytes(got[span[0]])

    # -- the first request, and streaming on from it ---------------------------------------

    def read_start(self, n):
        """The bundle's first `n` bytes (all of it if shorter), in one request. A server
        that answers with the whole file raises RangesUnsupported, and `stream()` reads on
        in that answer."""
        while True:
            try:
                resp = self._get("bytes=0-%d" % (n - 1))
                if resp.status == 200:
                    self._accept_full(resp)
                    self._resp = resp
                    raise RangesUnsupported("%s answers Range requests with the whole file"
                                            % self.url)  # fmt: skip
                self.start = self._read_start(resp, n)
                self._drop()
                return self.start
            except retryable() as e:
                self._failed("range request dropped: %s" % _describe(e))

    def _read_start(self, resp, n):
        if (resp.getheader("Content-Type") or "").lower().startswith("multipart/"):
            raise NetworkError("%s answered one range with several parts" % self.url)
        start, end = _content_range(resp.getheader("Content-Range"), self.sizes)
        short = end < n - 1 and (self.total is None or end != self.total - 1)
        if start != 0 or end > n - 1 or short:
            raise NetworkError("%s sent bytes %d-%d, not the first %d" % (self.url, start, end, n))
        data = bytearray()
        while len(data) <= end:
            got = resp.read(min(end + 1 - len(data), 1 << 20))
            if not got:
                raise OSError("answer ended %d bytes early" % (end + 1 - len(data)))
            self._count(len(got))
            data += got
        return bytes(data)

    def stream(self):
        """This bundle as a sequential Source (agent/transfer/fetch.py) from its first byte:
        the bytes read_start brought, then one request for the rest (`Range: bytes=N-` with
        If-Range), or the rest of the whole-file answer read_start was given."""
        if self._resp is None:
            self.size = self.total
        return self

    def _raw_read(self, n):
        if self.pos < len(self.start) or (self.size is not None and self.pos >= self.size):
            return self.start[self.pos : self.pos + n]  # b"" at the end: nothing to ask for
        return HttpSource._raw_read(self, n)

    def _raw_readinto(self, view):
        if self.pos < len(self.start) or (self.size is not None and self.pos >= self.size):
            data = self.start[self.pos : self.pos + len(view)]
            view[: len(data)] = data
            return len(data)
        return HttpSource._raw_readinto(self, view)

    # -- one batch, retried --------------------------------------------------------------------

    def _fetch(self, batch):
        """{start: bytearray} for every span of the batch, re-requesting what a drop cut."""
        got = dict((start, bytearray()) for start, _ in batch)
        while True:
            missing = [(s + len(got[s]), n - len(got[s])) for s, n in batch if len(got[s]) < n]
            if not missing:
                return got
            if not self.multi:
                missing = missing[:1]
            try:
                self._request_into(missing, got, dict(batch))
            except retryable() as e:
                self._failed("range request dropped: %s" % _describe(e))

    def _request_into(self, spans, got, lengths):
        value = "bytes=" + ",".join("%d-%d" % (s, s + n - 1) for s, n in spans)
        resp = self._get(value)
        if resp.status == 200:
            self._drop()
            if len(spans) == 1:
                raise RangesUnsupported("%s answers Range requests with the whole file" % self.url)
            self.multi = False  # a server that takes single ranges only
            return
        content_type = resp.getheader("Content-Type") or ""
        if content_type.lower().startswith("multipart/byteranges"):
            parts = self._multipart(resp, content_type)
        else:
            start, end = _content_range(resp.getheader("Content-Range"), self.sizes)
            parts = [(start, end, resp)]
            if len(spans) > 1:
                self.multi = False  # one part for several ranges: ask one at a time
        for start, end, body in parts:
            self._take(start, end, body, spans, got, lengths)
        self._drop()

    def _get(self, range_value):
        headers = {"Range": range_value}
        if self.validator:
            headers["If-Range"] = self.validator
        url = self.url
        for _ in range(6):
            resp = self._request(url, headers)
            if resp.status in (301, 302, 303, 307, 308):
                url = self._redirect(url, resp)
                continue
            status = resp.status
            if status in (408, 429) or 500 <= status <= 599:
                raise OSError("HTTP %d %s" % (status, resp.reason))  # retried with back-off
            if status not in (200, 206):
                raise NetworkError(
                    "HTTP %d %s from %s" % (status, resp.reason, self.url),
                    hint="check the URL in the update job",
                )
            self._same_entity(resp)
            return resp
        raise NetworkError("too many redirects from %s" % self.url)

    def _same_entity(self, resp):
        etag = resp.getheader("ETag")
        if self.etag is None:
            self.etag = etag
            if etag and not etag.startswith("W/"):
                self.validator = etag
            else:
                self.validator = resp.getheader("Last-Modified")
        elif etag and etag != self.etag:
            raise NetworkError(
                "%s changed during the download (ETag %s, was %s)" % (self.url, etag, self.etag),
                hint="the install will start over with the new file",
            )

    def _take(self, start, end, body, spans, got, lengths):
        """Read part [start, end] into the span it belongs to; a part that is not exactly
        the rest of a requested span is the server's error, not ours to splice."""
        for s, n in spans:
            if s == start and end == s + n - 1:
                origin = next(o for o in got if o <= s < o + lengths[o])
                left = n
                while left:
                    data = body.read(min(left, 1 << 20))
                    if not data:
                        raise OSError("answer ended %d bytes early" % left)
                    self._count(len(data))
                    got[origin] += data
                    left -= len(data)
                return
        raise NetworkError("%s sent bytes %d-%d, which were not asked for" % (self.url, start, end))

    def _multipart(self, resp, content_type):
        """Parts of a multipart/byteranges answer as (start, end, resp), read in turn."""
        boundary = None
        for param in content_type.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "boundary":
                boundary = value.strip('"')
        if not boundary:
            raise NetworkError("multipart answer from %s without a boundary" % self.url)
        delimiter = ("--" + boundary).encode("latin-1")
        while True:
            line = self._line(resp)
            while line in (b"\r\n", b"\n"):
                line = self._line(resp)
            if line.rstrip() == delimiter + b"--":
                return
            if line.rstrip() != delimiter:
                raise NetworkError("malformed multipart answer from %s" % self.url)
            content_range = None
            while True:
                line = self._line(resp)
                if line in (b"\r\n", b"\n"):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                if key.strip().lower() == "content-range":
                    content_range = value.strip()
            start, end = _content_range(content_range, self.sizes)
            yield start, end, resp

    def _line(self, resp):
        line = resp.readline(MAX_LINE)
        if not line:
            raise OSError("multipart answer ended early")
        if not line.endswith(b"\n"):
            raise NetworkError("multipart header line longer than %d bytes" % MAX_LINE)
        self._count(len(line))
        return line

    def _count(self, n):
        self.received += n
        self.since_failure += n
        if self.since_failure >= PROGRESS_RESET:
            self.failures = 0
        if self.limiter is not None:
            self.limiter.consume(n)


def _content_range(value, sizes=None):
    """'bytes 100-199/1000' -> (100, 199); the total (1000) is appended to `sizes`. ASCII
    digits only (fetch._ascii_int): int() would take '²' or '1_000'."""
    try:
        unit, rest = value.split(" ", 1)
        span, total = rest.split("/", 1)
        start, end = (_ascii_int(x) for x in span.split("-", 1))
        if unit != "bytes" or start is None or end is None or end < start:
            raise ValueError(value)
        if sizes is not None and total.strip() != "*":
            size = _ascii_int(total)
            if size is None:
                raise ValueError(value)
            sizes.append(size)
        return start, end
    except (AttributeError, ValueError):
        raise NetworkError("bad Content-Range %r in a range answer" % (value,)) from None


def open_ranges(location, settings=None, clock=None, sleep=None, rng=None, stopper=None):
    """FileRanges for a path or file:// URL, HttpRanges for http(s)://: the locations
    open_source takes, refused the same way. A missing file, or one that is not a regular
    file, is BadSource (permanent). HttpRanges keeps the streamed download's bounds:
    [download] max_time_s, redirects to http(s) only, `stopper`."""
    merged = dict(DOWNLOAD_DEFAULTS)
    merged.update(settings or {})
    scheme = urlsplit(location).scheme.lower() if "://" in location else ""
    if scheme in ("http", "https"):
        # sleep None: back-offs wait on the source's stop event, so a cancel cuts them short.
        return HttpRanges(location, merged, clock or time.monotonic, sleep,
                          rng or random.Random(), stopper=stopper)  # fmt: skip
    if scheme == "file":
        location = _file_url_path(location)
    elif scheme:
        raise BadSource(
            "unsupported source %s" % location, hint="use a path, file://, http:// or https://"
        )
    return FileRanges(location, stopper=stopper)


def open_job_ranges(url, settings=None, stopper=None):
    """open_ranges for a job's URL, under open_job_source's rules: http(s), or a regular file
    under [download] file_dir (symlinks resolved, then opened without following)."""
    merged = dict(DOWNLOAD_DEFAULTS)
    merged.update(settings or {})
    path = job_file_path(url, merged)
    if path is None:
        return open_ranges(url, merged, stopper=stopper)
    return FileRanges(path, nofollow=True, stopper=stopper)
