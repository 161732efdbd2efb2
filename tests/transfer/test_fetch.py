"""Sources against a real HTTP server that misbehaves on purpose, and local files."""

import random

import pytest

from agent.core.errors import BadSource, NetworkError, PayloadMismatch, Truncated
from agent.transfer.fetch import RateLimiter, open_source
from tests.transfer.conftest import read_all, settings


def _open(srv, clock, **kw):
    return open_source(
        srv.url("bundle.bin"),
        settings(**kw),
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
    )


def test_plain_http_download_is_byte_exact(server, blob, clock, via):
    with _open(server, clock) as src:
        assert src.size == len(blob)
        src.set_limit(len(blob))
        assert read_all(src, via) == blob
    assert [r["range"] for r in server.requests] == [None]


def test_resume_after_server_drops_connection_mid_payload(server, blob, clock, via):
    server.faults.drop_after = 1000 * 1000
    server.faults.drop_times = 2
    with _open(server, clock) as src:
        src.set_limit(len(blob))
        assert read_all(src, via) == blob
    ranges = [r["range"] for r in server.requests]
    assert ranges == [None, "bytes=1000000-", "bytes=2000000-"]
    # Every resume names the entity it continues.
    assert all(r["if_range"] for r in server.requests[1:])
    assert [r["status"] for r in server.requests] == [200, 206, 206]
    assert len(clock.sleeps) == 2


def test_resume_after_stalled_server_times_out(server, blob, clock, via):
    server.faults.stall_after = 500 * 1000
    server.faults.stall_times = 1
    with _open(server, clock, timeout_s=1.5) as src:
        assert read_all(src, via) == blob
    # A loaded machine may stall the resumed response too: only the first resume matters.
    first, resume = [r["range"] for r in server.requests][:2]
    assert first is None
    # A timed-out read may discard what it had buffered; the resume starts at the last byte
    # actually handed out, never beyond what the server sent.
    assert resume.startswith("bytes=") and 0 < int(resume[6:-1]) <= 500 * 1000


def test_retries_exhausted_gives_network_error_with_bounded_backoff(server, clock):
    server.faults.fail_first = 100
    with pytest.raises(NetworkError) as info:
        _open(server, clock, retries=5, backoff_s=0.5, backoff_max_s=4.0)
    assert "after 5 retries" in str(info.value)
    assert info.value.retry is True
    assert len(clock.sleeps) == 5
    caps = [min(4.0, 0.5 * 2**k) for k in range(5)]
    for slept, cap in zip(clock.sleeps, caps):
        assert 0 <= slept <= cap
    # Full jitter: not simply the cap every time.
    assert clock.sleeps != caps
    assert len(server.requests) == 6


def test_server_errors_then_ok_recovers(server, blob, clock, via):
    server.faults.fail_first = 2
    with _open(server, clock) as src:
        assert read_all(src, via) == blob
    assert [r["status"] for r in server.requests] == [503, 503, 200]


def test_endless_data_attack_is_stopped_at_the_manifest_bound(server, clock, via):
    server.faults.endless = True
    with _open(server, clock) as src:
        assert src.size is None
        src.set_limit(1 << 20)
        with pytest.raises(PayloadMismatch) as info:
            read_all(src, via)
        assert src.pos == 1 << 20
    assert "more than" in str(info.value)


def test_endless_data_attack_with_huge_content_length_rejected_before_download(server, clock):
    server.faults.declare_length = 1 << 40
    with _open(server, clock) as src:
        with pytest.raises(PayloadMismatch):
            src.set_limit(1 << 20)
        assert src.pos == 0


def test_truncated_file_on_server_is_truncated(server, blob, clock):
    with _open(server, clock) as src:
        with pytest.raises(Truncated):
            src.set_limit(len(blob) + 10)


def test_truncated_local_file_is_truncated(tmp_path, blob, clock, via):
    path = tmp_path / "b.bin"
    path.write_bytes(blob)
    src = open_source(str(path), settings(), clock=clock, sleep=clock.sleep)
    src.size = None  # as for a pipe: only the end of data tells
    src.set_limit(len(blob) + 1)
    with pytest.raises(Truncated):
        read_all(src, via)


def test_local_file_longer_than_manifest_is_rejected(tmp_path, blob, clock, via):
    path = tmp_path / "b.bin"
    path.write_bytes(blob)
    src = open_source("file://" + str(path), settings(), clock=clock, sleep=clock.sleep)
    src.size = None
    src.set_limit(len(blob) - 1)
    with pytest.raises(PayloadMismatch):
        read_all(src, via)


def test_resume_ignored_range_mid_download_is_network_error(server, clock, via):
    server.faults.drop_after = 100 * 1000
    server.faults.drop_times = 1
    server.faults.ignore_range = True
    with _open(server, clock) as src:
        with pytest.raises(NetworkError) as info:
            read_all(src, via)
    assert "HTTP 200" in str(info.value)


def test_range_ignored_at_offset_zero_restarts_safely(server, blob, clock, via):
    server.faults.drop_after = 0
    server.faults.drop_times = 1
    server.faults.ignore_range = True
    with _open(server, clock) as src:
        assert read_all(src, via) == blob


def test_file_swapped_during_download_wrong_etag_on_resume_rejected(server, clock, via):
    server.faults.drop_after = 100 * 1000
    server.faults.drop_times = 1
    server.faults.wrong_etag_on_resume = True
    with _open(server, clock) as src:
        with pytest.raises(NetworkError) as info:
            read_all(src, via)
    assert "changed during the download" in str(info.value)


def test_tls_unknown_ca_rejected_by_default(tls_server, clock):
    with pytest.raises(NetworkError) as info:
        _open(tls_server, clock)
    assert "not trusted" in str(info.value)
    assert clock.sleeps == []  # no point retrying a certificate


def test_tls_accepted_with_configured_ca_file(tls_server, blob, clock, via):
    with _open(tls_server, clock, ca_file=tls_server.ca_path) as src:
        assert read_all(src, via) == blob


def test_tls_resume_after_drop(tls_server, blob, clock, via):
    tls_server.faults.drop_after = 700 * 1000
    tls_server.faults.drop_times = 1
    with _open(tls_server, clock, ca_file=tls_server.ca_path) as src:
        assert read_all(src, via) == blob
    assert [r["range"] for r in tls_server.requests] == [None, "bytes=700000-"]


def test_not_found_is_network_error_without_retry(server, clock):
    with pytest.raises(NetworkError) as info:
        open_source(server.url("missing.bin"), settings(), clock=clock, sleep=clock.sleep)
    assert "404" in str(info.value)
    assert clock.sleeps == []


def test_rate_cap_with_fake_clock(server, blob, clock, via):
    rate = 1 << 20
    with _open(server, clock, max_rate=rate) as src:
        start = clock()
        assert read_all(src, via) == blob
    elapsed = clock() - start
    # One burst of `rate` bytes is free; the rest is paid for at `rate`.
    expected = (len(blob) - rate) / rate
    assert abs(elapsed - expected) < 1e-6


def test_rate_limiter_token_bucket_schedule(clock):
    bucket = RateLimiter(1000, 1000, clock, clock.sleep)
    bucket.consume(1000)
    assert clock.sleeps == []
    bucket.consume(500)
    assert clock.sleeps == [0.5]
    clock.now += 10  # idle: the bucket refills only up to the burst
    bucket.consume(1500)
    assert clock.sleeps == [0.5, 0.5]


def test_unsupported_scheme_rejected_without_retry():
    with pytest.raises(BadSource) as err:
        open_source("ftp://example.invalid/x", settings())
    assert not err.value.retry


def test_connection_refused_retries_then_network_error(clock):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(NetworkError) as info:
        open_source(
            "http://127.0.0.1:%d/bundle.bin" % port,
            settings(retries=2),
            clock=clock,
            sleep=clock.sleep,
            rng=random.Random(1),
        )
    assert "ConnectionRefusedError" in str(info.value)
    assert len(clock.sleeps) == 2


def test_redirect_followed_and_resume_goes_to_the_new_location(server, blob, clock, via):
    server.faults.redirects["latest.bin"] = "/bundle.bin"
    server.faults.drop_after = 200 * 1000
    server.faults.drop_times = 1
    src = open_source(server.url("latest.bin"), settings(), clock=clock, sleep=clock.sleep)
    with src:
        assert read_all(src, via) == blob
    paths = [(r["path"], r["range"]) for r in server.requests]
    assert paths == [("/latest.bin", None), ("/bundle.bin", None), ("/bundle.bin", "bytes=200000-")]


def test_https_redirect_to_plain_http_downgrade_refused(tls_server, clock):
    tls_server.faults.redirects["latest.bin"] = "http://127.0.0.1:9/bundle.bin"
    with pytest.raises(NetworkError) as info:
        open_source(
            tls_server.url("latest.bin"),
            settings(ca_file=tls_server.ca_path),
            clock=clock,
            sleep=clock.sleep,
        )
    assert "downgrade" in str(info.value)
