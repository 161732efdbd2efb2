"""Power-safe small-file writes: after a power cut a reader sees the old file or the new one.

Write a temporary file in the same directory, fsync it, rename it over the target, then fsync
the directory so the rename itself is durable. Used for the journal, slot status and the
trusted root; never for slot images (those are streamed and verified separately).
"""

import json
import os
import threading


def write_atomic(path, data):
    """Replace `path` with `data` (bytes) so that a crash leaves either version intact."""
    directory = os.path.dirname(os.path.abspath(path))
    # Unique per process and thread: two threads replacing the same file must not share it.
    tmp = "%s.tmp-%d-%d" % (path, os.getpid(), threading.get_ident())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path, obj):
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n")


def read_json(path, default=None):
    """The JSON in `path`, or `default` when the file does not exist yet."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return default
