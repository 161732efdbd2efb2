"""What an install asks the server for: exactly the requests it needs, and no byte twice.

The first request of an install (`bytes=0-4095`, agent/transfer/ranges.py HEAD_BYTES) both
tells the bundle's format and carries its head; a format-1 bundle is streamed on from there,
a format-2 bundle fetched by ranges after it. A real HTTP server on 127.0.0.1 records every
request."""

import os

import pytest

from agent.control import steps
from agent.transfer import delta, installer
from agent.trust.store import Trust
from tests.bundle.factory import make_bundle
from tests.install.test_delta import image, next_release, put, release

HEAD = "bytes=0-4095"


def install(board, url, **kwargs):
    cfg = board.config()
    return installer.install(url, cfg, board.boot(), Trust.from_config(cfg), **kwargs)


def asked(server):
    """[(first, last)] byte intervals of every request (last None: to the end)."""
    out = []
    for r in server.requests:
        if not r["range"]:
            out.append((0, None))
            continue
        for part in r["range"][len("bytes=") :].split(","):
            first, _, last = part.partition("-")
            out.append((int(first), int(last) if last else None))
    return out


def never_twice(server, size):
    """No byte of the bundle was asked for in two requests."""
    seen = bytearray(size)
    for first, last in asked(server):
        last = size - 1 if last is None else min(last, size - 1)
        assert not any(seen[first : last + 1]), "bytes %d-%d asked for again" % (first, last)
        seen[first : last + 1] = b"\1" * (last + 1 - first)


def test_format1_streams_on_from_the_first_request(board, tmp_path, served):
    payload = os.urandom(300 * 1024)
    path, root = make_bundle(tmp_path, {"rootfs": payload})
    b = board(root)
    server = served(path)
    install(b, server.url("b.cub"))
    assert b.read_slot("B") == payload
    ranges = [r["range"] for r in server.requests]
    assert ranges == [HEAD, "bytes=4096-"]  # the format from the head, then the rest
    assert server.requests[1]["if_range"]  # the very same file, or nothing
    assert server.body_bytes == os.path.getsize(path)


def test_format1_the_daemon_verified_streams_in_one_request(board, tmp_path, served):
    payload = os.urandom(200 * 1024)
    path, root = make_bundle(tmp_path, {"rootfs": payload})
    b = board(root)
    server = served(path)
    install(b, server.url("b.cub"), bundle_format=1)
    assert b.read_slot("B") == payload
    assert [r["range"] for r in server.requests] == [None]


def test_bundle_smaller_than_the_first_request_takes_one_request(board, tmp_path, served):
    path, root = make_bundle(tmp_path, {"rootfs": b"tiny firmware"})
    assert os.path.getsize(path) < 4096
    b = board(root)
    server = served(path)
    install(b, server.url("b.cub"))
    assert b.read_slot("B") == b"tiny firmware"
    assert [r["range"] for r in server.requests] == [HEAD]


def test_server_ignoring_range_is_read_on_in_its_first_answer(board, tmp_path, served):
    payload = os.urandom(200 * 1024)
    path, root = make_bundle(tmp_path, {"rootfs": payload})
    b = board(root)
    server = served(path)
    server.faults.ignore_range = True
    install(b, server.url("b.cub"))
    assert b.read_slot("B") == payload
    assert [r["status"] for r in server.requests] == [200]


def test_format2_delta_asks_for_each_byte_once(board, signer, served):
    old = release(1)
    new = next_release(old)
    b = board(signer.root)
    put(b.slot_a, image(old))
    path = signer(image(new))
    server = served(path)
    done = install(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    ranges = [r["range"] for r in server.requests]
    # The head (header, envelope, a small group index) and the block lists of the groups
    # the charger lacks (at the payload's start) came with the first request, then every
    # missing block in one multi-range request.
    assert ranges[0] == HEAD and len(ranges) == 2 and "," in ranges[1]
    never_twice(server, os.path.getsize(path))
    assert done.counters["downloaded"] < os.path.getsize(path) / 4


def test_format2_long_envelope_takes_one_more_request(board, signer, served, monkeypatch):
    monkeypatch.setattr(delta, "HEAD_BYTES", 16)  # the envelope does not fit the first request
    old = release(1)
    new = image(next_release(old))
    b = board(signer.root)
    put(b.slot_a, image(old))
    path = signer(new)
    server = served(path)
    install(b, server.url("b.cub"))
    assert b.read_slot("B") == new
    ranges = [r["range"] for r in server.requests]
    # the first 16 bytes, the rest of the envelope, the group index, the block lists of the
    # groups the charger lacks, their blocks
    assert ranges[0] == "bytes=0-15" and len(ranges) == 5
    never_twice(server, os.path.getsize(path))


def test_download_step_fetches_the_signed_header_and_nothing_else(board, tmp_path, served):
    payload = os.urandom(300 * 1024)
    path, root = make_bundle(tmp_path, {"rootfs": payload})
    b = board(root)
    server = served(path)
    cfg = b.config()
    event, _, envelope = steps.download(server.url("b.cub"), cfg)
    assert event == steps.lc.DOWNLOAD_OK
    assert [r["range"] for r in server.requests] == [HEAD]
    assert server.body_bytes == 4096
    # The install step is told the verified manifest's format: one streaming request.
    progress = steps.StatusProgress(lambda percent, sizes=None: None)
    event, _ = steps.install(server.url("b.cub"), cfg, b.boot(), Trust.from_config(cfg), None,
                             progress, envelope=envelope)  # fmt: skip
    assert event == steps.lc.INSTALL_OK
    assert [r["range"] for r in server.requests] == [HEAD, None]


@pytest.mark.parametrize("keep", [5, 40])
def test_truncated_bundle_is_refused_not_retried(board, tmp_path, served, keep):
    from agent.core.errors import Truncated

    path, root = make_bundle(tmp_path, {"rootfs": b"firmware"})
    with open(path, "rb") as f:
        data = f.read(keep)  # inside the header, inside the envelope
    put(path, data)
    b = board(root)
    server = served(path)
    event, problem, _ = steps.download(server.url("b.cub"), b.config())
    assert event == steps.lc.DOWNLOAD_ERROR and problem["reason"] == Truncated.reason
    assert not problem["transient"] and len(server.requests) == 1
    with pytest.raises(Truncated):
        install(b, server.url("b.cub"))
