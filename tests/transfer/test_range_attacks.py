"""The install by ranges (format 2, agent/transfer/ranges.py) under the same attacks as the
streamed download (tests/transfer/test_source_attacks.py, issue 11 #11-#14, #24): a server
that trickles its range answers, redirects a Range request to another scheme or sends odd
Content-Range numbers, and job URLs that point at local files outside the drop directory.
Real HTTP server on 127.0.0.1, real files."""

import os
import threading

import pytest

from agent.core.errors import BadSource, NetworkError
from agent.transfer import ranges
from agent.transfer.fetch import Stopper
from agent.transfer.ranges import open_job_ranges, open_ranges
from tests.transfer.conftest import settings

pytestmark = pytest.mark.timeout(60)


def fetch(r, spans):
    return b"".join(data for _, data in r.read_ranges(spans))


def test_range_answers_come_from_the_signed_file(server, blob):
    """The baseline the attacks below depart from: two ranges, the right bytes."""
    r = open_ranges(server.url("bundle.bin"), settings())
    try:
        assert fetch(r, [(10, 100), (5000, 7)]) == blob[10:110] + blob[5000:5007]
    finally:
        r.close()


# -- the whole transfer is bounded, and stoppable (#11) -------------------------------------


def test_trickling_range_answers_stopped_by_the_overall_download_limit(server):
    """One byte every 0.2 s keeps every per-read timeout happy; max_time_s ends it, as it
    ends a streamed download."""
    server.faults.trickle_s = 0.2
    r = open_ranges(server.url("bundle.bin"), settings(max_time_s=1.0, timeout_s=2.0))
    try:
        with pytest.raises(NetworkError, match="max_time_s"):
            fetch(r, [(0, 4096)])
    finally:
        r.close()
    assert server.faults.hung_up.wait(10), "the socket stayed open"


def test_stop_from_another_thread_ends_a_blocked_range_request(server):
    """The daemon's cancel and the job's deadline reach a range request blocked in recv()."""
    server.faults.trickle_s = 0.2
    stopper = Stopper()
    outcome = {}

    def worker():
        r = open_ranges(server.url("bundle.bin"), settings(), stopper=stopper)
        try:
            outcome["data"] = fetch(r, [(0, 4096)])
        except Exception as e:  # what the worker sees is the point of the test
            outcome["error"] = e
        finally:
            r.close()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    assert server.faults.trickling.wait(10), "the range request never started"
    stopper.stop(NetworkError("cancelled by the operator"))
    thread.join(10)
    assert not thread.is_alive(), "the worker thread lived on after the stop"
    assert "cancelled" in str(outcome.get("error"))
    assert server.faults.hung_up.wait(10), "the socket stayed open"


def test_stop_cuts_a_range_back_off_short(server):
    server.faults.fail_first = 100
    stopper = Stopper()
    done = threading.Event()
    outcome = {}

    def worker():
        r = open_ranges(server.url("bundle.bin"),
                        settings(backoff_s=600, backoff_max_s=600), stopper=stopper)  # fmt: skip
        try:
            fetch(r, [(0, 10)])
        except Exception as e:
            outcome["error"] = e
        finally:
            r.close()
        done.set()

    threading.Thread(target=worker, daemon=True).start()
    assert server.faults.failed.wait(10), "the server was never asked"
    stopper.stop(NetworkError("deadline"))
    assert done.wait(10), "the back-off outlived the stop"
    assert "deadline" in str(outcome["error"])


def test_local_range_reads_after_a_stop_fail_at_once(tmp_path):
    (tmp_path / "b.cub").write_bytes(b"x" * 10)
    stopper = Stopper()
    stopper.stop(NetworkError("cancelled"))
    r = open_ranges(str(tmp_path / "b.cub"), settings(), stopper=stopper)
    try:
        with pytest.raises(NetworkError, match="cancelled"):
            fetch(r, [(0, 10)])
    finally:
        r.close()


# -- redirects (#13) and Content-Range numbers (#14) ---------------------------------------


def test_range_redirect_to_file_scheme_refused(server):
    server.faults.redirects["evil.bin"] = "file:///etc/passwd"
    r = open_ranges(server.url("evil.bin"), settings())
    try:
        with pytest.raises(NetworkError, match="not an http"):
            fetch(r, [(0, 10)])
    finally:
        r.close()


@pytest.mark.parametrize("scheme", ["ftp", "gopher"])
def test_range_redirect_to_other_scheme_not_fetched_as_http(server, scheme):
    """The target is this very server: fetched as HTTP, its bytes would have come back."""
    host, port = server.server_address
    server.faults.redirects["evil.bin"] = "%s://%s:%d/bundle.bin" % (scheme, host, port)
    r = open_ranges(server.url("evil.bin"), settings())
    try:
        with pytest.raises(NetworkError, match="not an http"):
            fetch(r, [(0, 10)])
    finally:
        r.close()
    assert [q["path"] for q in server.requests] == ["/evil.bin"]


@pytest.mark.parametrize(
    "value",
    ["bytes \u00b2-5/10", "bytes 0-\u00b9/10", "bytes 0-5/1\u00b2", "bytes 0-1_0/100",
     "bytes 0-5/\u0661\u0660", "bytes  -5/10", "bytes 5-4/10"],
)  # fmt: skip
def test_content_range_unicode_digit_is_not_a_range(value):
    """int() takes '1_0' and Arabic-Indic digits and chokes on '²': the answer's range and the
    bundle's size it reports are ASCII digits, or the answer is refused."""
    with pytest.raises(NetworkError, match="bad Content-Range"):
        ranges._content_range(value, [])


# -- the first request (read_start, issue 15) keeps the same bounds ------------------------


def test_trickling_first_request_stopped_by_the_overall_download_limit(server):
    server.faults.trickle_s = 0.2
    r = open_ranges(server.url("bundle.bin"), settings(max_time_s=1.0, timeout_s=2.0))
    try:
        with pytest.raises(NetworkError, match="max_time_s"):
            r.read_start(ranges.HEAD_BYTES)
    finally:
        r.close()
    assert server.faults.hung_up.wait(10), "the socket stayed open"


@pytest.fixture
def answering():
    """A real HTTP server on 127.0.0.1 whose 206 answers carry `content_range` verbatim."""
    import http.server

    state = {"content_range": None}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"x" * 10
            self.send_response(206)
            self.send_header("Content-Range", state["content_range"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    state["url"] = "http://127.0.0.1:%d/b.cub" % srv.server_address[1]
    yield state
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize(
    "value, match",
    [("bytes 0-9/*", "not the first"), ("bytes 0-9/1\u00b2", "bad Content-Range"),
     ("bytes 0-9/20", "not the first"), ("bytes 1-9/10", "not the first")],
)  # fmt: skip
def test_first_answer_short_or_odd_is_refused_not_a_crash(answering, value, match):
    """10 bytes of 4096 asked for: only a bundle of exactly 10 bytes may answer that short;
    an unknown size ('*') used to raise TypeError out of the download step."""
    answering["content_range"] = value
    r = open_ranges(answering["url"], settings(retries=0))
    try:
        with pytest.raises(NetworkError, match=match):
            r.read_start(ranges.HEAD_BYTES)
    finally:
        r.close()


# -- local files (#12, #24) ----------------------------------------------------------------


def test_missing_local_bundle_by_ranges_is_permanent_not_retried(tmp_path):
    """It used to be a NetworkError (temporary: exit 75, retried by the daemon)."""
    with pytest.raises(BadSource, match="cannot open") as err:
        open_ranges(str(tmp_path / "missing.cub"), settings())
    assert not err.value.retry


def test_fifo_as_local_bundle_by_ranges_never_hangs(tmp_path):
    fifo = tmp_path / "bundle.cub"
    os.mkfifo(fifo)
    with pytest.raises(BadSource, match="not a regular file"):
        open_ranges(str(fifo), settings())


@pytest.fixture
def drop(tmp_path):
    d = tmp_path / "drop"
    d.mkdir()
    (d / "b.cub").write_bytes(b"bundle bytes")
    return d


def test_job_ranges_file_url_under_file_dir_is_read(drop):
    r = open_job_ranges("file://%s/b.cub" % drop, settings(file_dir=str(drop)))
    try:
        assert fetch(r, [(7, 5)]) == b"bytes"
    finally:
        r.close()


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "file://{drop}/../../etc/passwd", "file://{drop}/link.cub"]
)
def test_job_ranges_file_url_outside_file_dir_refused(drop, url):
    (drop / "link.cub").symlink_to("/etc/passwd")
    with pytest.raises(BadSource, match="not a file under"):
        open_job_ranges(url.format(drop=drop), settings(file_dir=str(drop)))


def test_job_ranges_file_url_is_no_existence_oracle(drop):
    def refusal(path):
        with pytest.raises(BadSource) as err:
            open_job_ranges("file://" + path, settings(file_dir=str(drop)))
        return str(err.value).replace(path, "PATH")

    assert refusal("/etc/passwd") == refusal("/etc/no-such-file-here")


def test_job_ranges_file_url_without_file_dir_refused(drop):
    with pytest.raises(BadSource, match="not allowed"):
        open_job_ranges("file://%s/b.cub" % drop, settings())


def test_job_ranges_fifo_in_file_dir_never_hangs(drop):
    os.mkfifo(drop / "fifo.cub")
    with pytest.raises(BadSource, match="not a regular file"):
        open_job_ranges("file://%s/fifo.cub" % drop, settings(file_dir=str(drop)))


@pytest.mark.parametrize("url", ["ftp://x/b.cub", "/abs/path.cub", "gopher://x/"])
def test_job_ranges_url_of_another_kind_refused(url):
    with pytest.raises(BadSource):
        open_job_ranges(url, settings())
