"""Power-safe small-file writes: after a power cut a reader sees the old file or the new one.

Write a temporary file in the same directory, fsync it, rename it over the target, then fsync
the directory so the rename itself is durable. Used for the journal, slot status and the
trusted root; never for slot images (those are streamed and verified separately).

The temp file gets an unpredictable name and is created with O_EXCL|O_NOFOLLOW: a file or
symlink someone planted in the directory is never opened, followed or truncated.
"""

import binascii
import errno
import json
import os

TEMP_TRIES = 8
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_CREATE |= getattr(os, "O_CLOEXEC", 0)


def _temp_suffix():
    return "tmp-" + binascii.hexlify(os.urandom(8)).decode("ascii")


def create_temp(path):
    """(fd, name) of a new file beside `path` that did not exist before this call."""
    for _ in range(TEMP_TRIES):
        tmp = "%s.%s" % (path, _temp_suffix())
        try:
            return os.open(tmp, _CREATE, 0o644), tmp
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ELOOP):
                raise
    raise FileExistsError(errno.EEXIST, "no free temp name after %d tries" % TEMP_TRIES, path)


def write_atomic(path, data):
    """Replace `path` with `data` (bytes) so that a crash leaves either version intact."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = create_temp(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
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
    """The JSON in `path`, or `default` when the file does not exist yet. A file that is not
    JSON raises ValueError, also one nested deeper than the parser recurses (a planted
    "[[[[..." would raise RecursionError, which no caller expects)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return default
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("%s is nested too deeply to be a state record" % path) from None
