"""Issue 11's job attacks through the front-ends next to MQTT (OCPP through the local API,
EVerest's system_API): they hand the engine a request dict (`Daemon.submit`), which must meet
the same rules as an MQTT job: no code named as a check, local files only under
[download] file_dir (also for a detached-signature job, which hashes the whole file), the
version checked against the signed one. And the install by ranges (format 2) stays bounded
by the job's deadline and stopped by cancel, as the streamed download is. The daemon runs
in-process on a file board (tests/daemon/inproc.py); real HTTP server on 127.0.0.1."""

import os
import time

import pytest

from agent.bundle.writer import PayloadSource, create_bundle
from agent.core import lifecycle as lc
from agent.transfer import delta
from agent.trust.store import Trust
from hil.services.httpserver import FileServer
from tests.bundle.factory import HW, MODEL, default_keys, make_bundle
from tests.daemon import plugins
from tests.daemon.inproc import Board

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def release(tmp_path):
    """A signed 1.1.0 bundle (format 1) and a signed 1.2.0 one (format 2, installed by
    ranges), served over HTTP, both trusted by the boards' root."""
    bundle, root = make_bundle(tmp_path, version="1.1.0", security_version=2)
    image = str(tmp_path / "image-1.2.0")
    with open(image, "wb") as f:
        f.write(os.urandom(64 * 4096))
    chunked = str(tmp_path / "b2.cub")
    create_bundle(
        chunked, [PayloadSource("rootfs", "rootfs", image, "zstd-chunks")], [default_keys()[1]],
        version="1.2.0", security_version=2,
        compatible=[{"model": MODEL, "hardware_revisions": [HW]}],
        expires=int(time.time()) + 86400,
    )  # fmt: skip
    server = FileServer({"b.cub": bundle, "b2.cub": chunked}).start()
    server.bundle, server.chunked, server.root = bundle, chunked, root
    yield server
    server.stop()


@pytest.fixture
def boards(tmp_path, release):
    made = []

    def make(**config):
        board = Board(tmp_path / ("board%d" % len(made)), release.root, config)
        made.append(board)
        return board

    yield make
    for board in made:
        board.stop()


def request(url, **fields):
    """A front-end's job request, as agent/frontends/ocpp/service.py builds it."""
    doc = {"id": "ocpp-7-abc", "url": url, "retries": 0}
    doc.update(fields)
    return doc


def final_of(board, job_id):
    return board.channel.wait_status(
        lambda m: m.get("job_id") == job_id and m["status"] in lc.FINAL_STATUSES
    )


def test_frontend_job_checks_cannot_import_os_abort(boards, release):
    """A front-end request naming code as a check is refused, as an MQTT job is (review #1):
    nothing a CSMS or a local stack sends is ever imported."""
    plugins.LOADED.clear()
    board = boards().start()
    for checks in (["os:abort"], ["tests.daemon.plugins:Recorder"]):
        answer, detail = board.daemon.submit(request(release.url("b.cub"), checks=checks))
        assert answer == "rejected" and checks[0] in detail
    assert board.daemon.journey.state == lc.IDLE and plugins.LOADED == []


def test_frontend_job_may_add_a_configured_check(boards, release):
    """The rule refuses code, not checks the board has: a configured one is accepted."""
    board = boards().start()
    answer, _ = board.daemon.submit(request(release.url("b.cub"), checks=["communication"]))
    assert answer == "accepted"


def test_frontend_file_job_outside_file_dir_is_refused_the_same_whether_it_exists(boards):
    """An UpdateFirmware location of file:///etc/passwd (review #12): DownloadFailed as
    bad-source, and the answer does not tell whether the file exists."""
    board = boards(download={"file_dir": "drop"}).start()
    details = []
    for i, path in enumerate(("/etc/passwd", "/etc/no-such-file-here")):
        job_id = "ocpp-%d-x" % i
        answer, _ = board.daemon.submit(request("file://" + path, id=job_id))
        assert answer == "accepted"
        final = final_of(board, job_id)
        assert (final["status"], final["reason"]) == ("DownloadFailed", "bad-source")
        details.append(final["detail"].replace(path, "PATH"))
    assert details[0] == details[1]


def test_frontend_detached_signature_job_reads_no_file_outside_file_dir(boards):
    """A detached-signature job hashes the whole file before anything is verified: its
    location obeys the same rules (outside file_dir, a FIFO inside it: never read, never
    hung on)."""
    board = boards(download={"file_dir": "drop"})
    os.makedirs(os.path.join(board.dir, "drop"))
    fifo = os.path.join(board.dir, "drop", "fw.bin")
    os.mkfifo(fifo)
    board.start()
    signed = {"signature": "AAAA", "signing_certificate": "-----BEGIN CERTIFICATE-----"}
    for i, url in enumerate(("file:///etc/passwd", "file://" + fifo)):
        job_id = "ocpp-%d-sig" % i
        answer, _ = board.daemon.submit(request(url, id=job_id, **signed))
        assert answer == "accepted"
        final = final_of(board, job_id)
        assert (final["status"], final["reason"]) == ("DownloadFailed", "bad-source")


def test_frontend_job_version_not_in_the_signed_manifest_is_refused(boards, release):
    """OCPP names no version; a front-end that does must name the signed one (review #16)."""
    board = boards().start()
    answer, _ = board.daemon.submit(request(release.url("b.cub"), version="9.9.9"))
    assert answer == "accepted"
    final = final_of(board, "ocpp-7-abc")
    assert (final["status"], final["reason"]) == ("InvalidSignature", "version-mismatch")
    with open(os.path.join(board.dir, "b.img"), "rb") as f:
        assert f.read() == b"firmware of slot b"


def trickle_payload_ranges(board, release):
    """The bundle's head comes at full speed, every payload range one byte per 0.2 s."""
    cfg = board.cfg()
    check = lambda env: Trust.from_config(cfg).verify(env)  # noqa: E731
    head = delta.dry_run(release.chunked, cfg, board.boot, check)["head_bytes"]
    release.faults.trickle_from = head
    release.faults.trickle_s = 0.2
    release.faults.multirange = "first"  # one range per request: each answer trickles


def test_trickling_range_install_cannot_outlive_the_job_deadline(boards, release):
    """The install by ranges (format 2) runs under the job's deadline like the download."""
    board = boards()
    trickle_payload_ranges(board, release)
    board.start()
    job = {"job_id": "d1", "url": release.url("b2.cub"), "version": "1.2.0",
           "deadline": int(time.time()) + 4}  # fmt: skip
    board.channel.inject("update/job", job)
    assert release.faults.trickling.wait(10), "the payload ranges never started"
    final = final_of(board, "d1")
    assert (final["status"], final["reason"]) == ("InstallationFailed", "deadline")
    _assert_worker_gone(board, release)


def test_superseding_request_stops_the_range_install_worker_and_its_socket(boards, release):
    """MQTT's cancel is refused once installing started; a front-end's new request replaces
    the job (AcceptedCanceled) and must stop the old install's worker, blocked in a range
    answer, not leave it writing the slot the next job writes."""
    board = boards()
    trickle_payload_ranges(board, release)
    board.start()
    answer, _ = board.daemon.submit(request(release.url("b2.cub"), id="ocpp-1-old"))
    assert answer == "accepted"
    assert release.faults.trickling.wait(10), "the payload ranges never started"
    old = board.daemon.worker
    answer, _ = board.daemon.submit(request(release.url("b.cub"), id="ocpp-2-new"))
    assert answer == "accepted-canceled"
    old.join(10)
    assert not old.is_alive(), "the superseded install worker lived on"
    assert release.faults.hung_up.wait(10), "the range request's socket stayed open"


def _assert_worker_gone(board, release):
    worker = board.daemon.worker
    worker.join(10)
    assert not worker.is_alive(), "the install worker lived on"
    assert release.faults.hung_up.wait(10), "the range request's socket stayed open"
