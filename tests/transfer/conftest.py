"""Fixtures for the transfer tests: a real file server on 127.0.0.1 (plain and TLS), a fake
clock whose sleep advances time and records every back-off, and stand-in payloads."""

import hashlib
import os

import pytest

from hil.services.httpserver import FileServer, make_tls


class FakeClock:
    """time.monotonic + time.sleep that never wait: sleeping advances the clock."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class StandInPayload:
    """What the manifest's Payload offers write_payload (see docs/architecture.md)."""

    def __init__(self, stored, installed=None, name="rootfs", compression="none"):
        installed = stored if installed is None else installed
        self.name = name
        self.size = len(stored)
        self.sha256 = hashlib.sha256(stored).hexdigest()
        self.compression = compression
        self.installed_size = len(installed)
        self.installed_sha256 = hashlib.sha256(installed).hexdigest()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def blob():
    return os.urandom(3 * 1024 * 1024 + 12345)


@pytest.fixture
def server(blob):
    srv = FileServer({"bundle.bin": blob}).start()
    yield srv
    srv.stop()


@pytest.fixture
def tls_server(blob, tmp_path):
    ctx, ca_path = make_tls(str(tmp_path))
    srv = FileServer({"bundle.bin": blob}, ssl_context=ctx).start()
    srv.ca_path = ca_path
    yield srv
    srv.stop()


def settings(**overrides):
    base = {
        "timeout_s": 5.0,
        "retries": 3,
        "backoff_s": 0.5,
        "backoff_max_s": 4.0,
        "max_rate": 0,
        "ca_file": "",
        "chunk_size": 64 * 1024,
    }
    base.update(overrides)
    return base


def read_all(source, via="read", chunk=64 * 1024):
    """Everything from a Source, through read(n) or through readinto(buffer) (the installer's
    zero-copy path); both must give the same bytes and the same errors."""
    parts = []
    buf = bytearray(chunk)
    while True:
        if via == "readinto":
            n = source.readinto(buf)
            data = bytes(buf[:n])
        else:
            data = source.read(chunk)
        if not data:
            return b"".join(parts)
        parts.append(data)


@pytest.fixture(params=["read", "readinto"])
def via(request):
    return request.param
