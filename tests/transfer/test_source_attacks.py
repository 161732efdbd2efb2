"""Sources under attack (issue 11, adversarial review #11-#14, #24): a server that trickles,
redirects to other schemes or sends odd headers, and job URLs that point at local files,
FIFOs and paths outside the drop directory. Real HTTP server on 127.0.0.1, real files."""

import os
import threading

import pytest

from agent.core.errors import BadSource, NetworkError
from agent.transfer.fetch import Stopper, open_job_source, open_source
from tests.transfer.conftest import read_all, settings

# A test that fails by hanging (FIFO, trickle) fails within this, never blocks the suite.
pytestmark = pytest.mark.timeout(60)


# -- redirects (#13) -----------------------------------------------------------------------


def test_redirect_to_file_scheme_refused(server, clock):
    server.faults.redirects["evil.bin"] = "file:///etc/passwd"
    with pytest.raises(NetworkError, match="not an http"):
        open_source(server.url("evil.bin"), settings(), clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []  # refused, not retried


@pytest.mark.parametrize("scheme", ["ftp", "gopher", "FTP"])
def test_redirect_to_other_scheme_not_fetched_as_http(server, clock, scheme):
    """The target is this very server: fetched as HTTP, it would have been downloaded."""
    host, port = server.server_address
    server.faults.redirects["evil.bin"] = "%s://%s:%d/bundle.bin" % (scheme, host, port)
    with pytest.raises(NetworkError, match="not an http"):
        open_source(server.url("evil.bin"), settings(), clock=clock, sleep=clock.sleep)
    assert [r["path"] for r in server.requests] == ["/evil.bin"]


# -- Content-Length (#14) ------------------------------------------------------------------


@pytest.mark.parametrize("length", ["\u00b2", "-5", "0x10"])
def test_content_length_unicode_digit_is_not_a_length(server, blob, clock, length, via):
    """'²' passes str.isdigit() and crashed int(); only ASCII digits are a length, and a
    body without a usable one is read up to the signed bound."""
    server.faults.declare_length = length
    with open_source(server.url("bundle.bin"), settings(), clock=clock, sleep=clock.sleep) as src:
        assert src.size is None
        src.set_limit(len(blob))
        assert read_all(src, via) == blob


def test_content_length_with_underscore_is_not_taken_as_a_number(server, blob, clock):
    """int('1_0') is 10: the header would have passed as a length of 10."""
    server.faults.declare_length = "1_0"
    with open_source(server.url("bundle.bin"), settings(), clock=clock, sleep=clock.sleep) as src:
        assert src.size is None


# -- local files (#12, #24) ----------------------------------------------------------------


def test_missing_local_bundle_is_permanent_not_retried(tmp_path):
    with pytest.raises(BadSource, match="cannot open") as err:
        open_source(str(tmp_path / "missing.cub"), settings())
    assert not err.value.retry and err.value.exit_code != 75


def test_directory_as_local_bundle_is_permanent_not_retried(tmp_path):
    with pytest.raises(BadSource) as err:
        open_source("file://" + str(tmp_path), settings())
    assert not err.value.retry


def test_fifo_as_local_bundle_never_hangs(tmp_path):
    fifo = tmp_path / "bundle.cub"
    os.mkfifo(fifo)
    with pytest.raises(BadSource, match="not a regular file"):
        open_source(str(fifo), settings())


@pytest.fixture
def drop(tmp_path):
    """A board's [download] file_dir with one bundle in it."""
    d = tmp_path / "drop"
    d.mkdir()
    (d / "b.cub").write_bytes(b"bundle bytes")
    return d


def test_job_file_url_under_file_dir_is_read(drop):
    with open_job_source("file://%s/b.cub" % drop, settings(file_dir=str(drop))) as src:
        assert src.read(100) == b"bundle bytes"


def test_job_file_url_without_file_dir_refused(drop):
    with pytest.raises(BadSource, match="not allowed"):
        open_job_source("file://%s/b.cub" % drop, settings())


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "file:///etc/no-such-file", "file://{drop}/../../etc/passwd",
     "file://{drop}/%2e%2e/%2e%2e/etc/passwd", "file://{drop}", "file://{drop}/"],
)  # fmt: skip
def test_job_file_url_outside_file_dir_refused(drop, url):
    with pytest.raises(BadSource, match="not a file under") as err:
        open_job_source(url.format(drop=drop), settings(file_dir=str(drop)))
    assert not err.value.retry


def test_job_file_url_is_no_existence_oracle(drop):
    """Whether /etc/passwd exists must not show in the answer (review #12)."""

    def refusal(path):
        with pytest.raises(BadSource) as err:
            open_job_source("file://" + path, settings(file_dir=str(drop)))
        return str(err.value).replace(path, "PATH")

    assert refusal("/etc/passwd") == refusal("/etc/no-such-file-here")


def test_job_file_url_symlink_out_of_file_dir_refused(drop):
    (drop / "link.cub").symlink_to("/etc/passwd")
    with pytest.raises(BadSource, match="not a file under"):
        open_job_source("file://%s/link.cub" % drop, settings(file_dir=str(drop)))


def test_job_file_url_fifo_in_file_dir_never_hangs(drop):
    os.mkfifo(drop / "fifo.cub")
    with pytest.raises(BadSource, match="not a regular file"):
        open_job_source("file://%s/fifo.cub" % drop, settings(file_dir=str(drop)))


@pytest.mark.parametrize("url", ["ftp://x/b.cub", "/abs/path.cub", "gopher://x/", "data:,x"])
def test_job_url_of_another_kind_refused(url):
    with pytest.raises(BadSource):
        open_job_source(url, settings())


def test_job_file_url_with_remote_host_refused(drop):
    with pytest.raises(BadSource, match="remote host"):
        open_job_source("file://evil.example/%s/b.cub" % drop, settings(file_dir=str(drop)))


# -- the whole transfer is bounded, and stoppable (#11) -------------------------------------


def test_trickling_server_stopped_by_the_overall_download_limit(server):
    """One byte every 0.2 s keeps every per-read timeout happy; max_time_s ends it."""
    server.faults.trickle_s = 0.2
    with open_source(server.url("bundle.bin"), settings(max_time_s=1.0, timeout_s=2.0)) as src:
        with pytest.raises(NetworkError, match="max_time_s"):
            read_all(src)
    assert server.faults.hung_up.wait(10), "the socket stayed open"


class FirstByte(threading.Event):
    """A progress sink that tells when the first byte of a transfer arrived."""

    def update(self, n):
        self.set()


def test_stop_from_another_thread_ends_a_blocked_download(server):
    """The daemon's cancel: the worker blocked in recv() ends at once, its socket closed."""
    server.faults.trickle_s = 0.2
    stopper = Stopper()
    outcome = {}
    flowing = FirstByte()

    def worker():
        try:
            url = server.url("bundle.bin")
            with open_source(url, settings(), stopper=stopper, progress=flowing) as src:
                outcome["data"] = read_all(src, chunk=1)
        except Exception as e:  # what the worker sees is the point of the test
            outcome["error"] = e

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    assert flowing.wait(10), "the download never started"
    stopper.stop(NetworkError("cancelled by the operator"))
    thread.join(10)
    assert not thread.is_alive(), "the worker thread lived on after the stop"
    assert "cancelled" in str(outcome.get("error"))
    assert server.faults.hung_up.wait(10), "the socket stayed open"


def test_stop_cuts_a_back_off_short(server):
    """A server answering 503 makes the source back off; a stop must not wait for it."""
    server.faults.fail_first = 100
    stopper = Stopper()
    done = threading.Event()
    outcome = {}

    def worker():
        try:
            open_source(
                server.url("bundle.bin"), settings(backoff_s=600, backoff_max_s=600),
                stopper=stopper,
            )  # fmt: skip
        except Exception as e:
            outcome["error"] = e
        done.set()

    threading.Thread(target=worker, daemon=True).start()
    assert server.faults.failed.wait(10), "the server was never asked"
    stopper.stop(NetworkError("deadline"))  # the source now sits in a back-off of up to 600 s
    assert done.wait(10), "the back-off outlived the stop"
    assert "deadline" in str(outcome["error"])


def test_source_opened_after_a_stop_fails_at_once(tmp_path):
    (tmp_path / "b.cub").write_bytes(b"x" * 10)
    stopper = Stopper()
    stopper.stop(NetworkError("cancelled"))
    with pytest.raises(NetworkError, match="cancelled"):
        with open_source(str(tmp_path / "b.cub"), settings(), stopper=stopper) as src:
            src.read(10)
