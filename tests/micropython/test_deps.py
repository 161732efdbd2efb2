"""umqtt for the MicroPython agent comes from its pinned PyPI source archive, read with
tarfile (hil/mpyboard/deps.py): anything else is refused, never installed."""

import hashlib
import io
import json
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hil.mpyboard import deps

PREFIX = deps.SDIST[: -len(".tar.gz")] + "/"


def archive(members):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(PREFIX + name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@pytest.fixture(scope="module")
def sdist():
    deps.ensure_umqtt()  # the real archive, fetched once into .cache
    with open(os.path.join(deps.CACHE, deps.SDIST), "rb") as f:
        return f.read()


def test_the_sources_are_the_pinned_members_of_the_pinned_archive(sdist, tmp_path):
    assert hashlib.sha256(sdist).hexdigest() == deps.SDIST_SHA256
    deps.extract(sdist, str(tmp_path))
    found = sorted(os.path.relpath(os.path.join(d, n), tmp_path)
                   for d, _, names in os.walk(tmp_path) for n in names)  # fmt: skip
    assert found == sorted(deps.PINNED)
    assert deps.ensure_umqtt(str(tmp_path)) == str(tmp_path)  # complete: nothing fetched


def test_a_changed_member_is_refused(sdist, tmp_path):
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        members = {rel: tar.extractfile(PREFIX + rel).read() for rel in deps.PINNED}
    members["umqtt/simple2.py"] += b"\nimport os  # planted\n"
    with pytest.raises(deps.Missing, match="simple2.py"):
        deps.extract(archive(members), str(tmp_path))
    assert not os.path.exists(tmp_path / "umqtt" / "simple2.py")


class Index(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        if self.path.endswith("/%s/" % deps.PROJECT):
            url = "http://%s:%d/files/%s" % (*self.server.server_address, deps.SDIST)
            data = json.dumps({"files": [{"filename": deps.SDIST, "url": url}]}).encode()
        elif self.path == "/files/" + deps.SDIST:
            data = self.body
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def index():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_archive_is_found_through_the_simple_api_and_checked(sdist, index):
    url = "http://127.0.0.1:%d/simple" % index.server_address[1]
    Index.body = sdist
    assert deps.fetch_sdist(url) == sdist
    Index.body = sdist[:-1] + bytes([sdist[-1] ^ 1])  # an index serving other bytes
    with pytest.raises(deps.Missing, match="pinned SHA-256"):
        deps.fetch_sdist(url)
