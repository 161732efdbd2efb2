"""U-Boot environment storage, byte-compatible with fw_printenv/fw_setenv and mkenvimage.

Invariant: a write never leaves an environment that a reader (ours, fw_printenv, U-Boot) takes
for a mix of old and new variables. For a redundant pair we rewrite only the inactive copy, with
its old flag byte, fsync, and only then write the one flag byte that makes it the newer copy; a
cut anywhere before that byte leaves the inactive copy either invalid (CRC) or still older, so
the old copy wins; after it the new copy wins. A single copy in a regular file is replaced by
temp file + fsync + rename. A single copy on a raw device is rewritten in place and is NOT
power-safe: use a redundant pair there. Anything unreadable raises BootEnvError; we never guess.

Layout (see docs/bootloader.md):
  single    [u32 LE crc32(data)][data]
  redundant [u32 LE crc32(data)][u8 flags][data]     flags: newer copy wins, 255 -> 0 wraps
  data      b"key=value\\0" ... b"\\0", padded with 0xFF to the copy size
"""

import binascii
import contextlib
import fcntl
import os
import stat
import struct
import time

from agent.core.errors import BootEnvError, Transient
from agent.core.text import is_digits
from agent.state.atomic import create_temp, fsync_dir

DEFAULT_CONFIG = "/etc/fw_env.config"
# fw_setenv (libubootenv) holds flock(LOCK_EX) on this file around its read-modify-write;
# we take the same lock so an OEM script running fw_setenv cannot interleave with us.
LOCK_FILE = "/var/lock/fw_printenv.lock"
PAD = b"\xff"


def _text(raw):
    # Variables are bytes in the env; surrogateescape keeps any non-UTF-8 byte intact.
    return raw.decode("utf-8", "surrogateescape")


def _raw(text):
    return text.encode("utf-8", "surrogateescape")


# --- codec -------------------------------------------------------------------------------


def check_var(key, value):
    """Raise BootEnvError if key/value cannot be stored in a U-Boot env."""
    if not key or "=" in key or "\0" in key:
        raise BootEnvError("invalid U-Boot variable name %r" % key, hint="no '=', NUL or empty")
    if "\0" in value:
        raise BootEnvError("value of %s contains NUL, which U-Boot cannot store" % key)


def encode_data(variables, capacity):
    """The data area: sorted "k=v\\0" entries, an empty entry, 0xFF padding to `capacity`."""
    body = bytearray()
    for key in sorted(variables, key=_raw):
        check_var(key, variables[key])
        body += _raw(key) + b"=" + _raw(variables[key]) + b"\0"
    body += b"\0"
    if len(body) > capacity:
        raise BootEnvError(
            "U-Boot environment needs %d bytes but holds only %d" % (len(body), capacity),
            hint="delete variables or enlarge the env (CONFIG_ENV_SIZE and fw_env.config)",
        )
    return bytes(body) + PAD * (capacity - len(body))


def decode_data(data):
    """Variables from a data area whose CRC already matched. Raises BootEnvError if malformed."""
    variables = {}
    pos = 0
    while True:
        end = data.find(b"\0", pos)
        if end < 0:
            raise BootEnvError("U-Boot environment has no end marker", hint="env is corrupt")
        if end == pos:  # an empty entry ends the environment
            return variables
        key, sep, value = data[pos:end].partition(b"=")
        if not sep or not key:
            raise BootEnvError("U-Boot environment entry %r has no name=" % data[pos:end][:40])
        variables[_text(key)] = _text(value)
        pos = end + 1


def encode_copy(variables, size, redundant, flags=0):
    """One whole copy (header + data) of `size` bytes."""
    if redundant:
        data = encode_data(variables, size - 5)
        return struct.pack("<IB", binascii.crc32(data), flags) + data
    data = encode_data(variables, size - 4)
    return struct.pack("<I", binascii.crc32(data)) + data


def parse_copy(blob, redundant):
    """(variables, flags) of one copy, or None when its CRC does not match."""
    head = 5 if redundant else 4
    if len(blob) <= head + 1:
        return None
    crc = struct.unpack_from("<I", blob)[0]
    data = blob[head:]
    if binascii.crc32(data) != crc:
        return None
    flags = blob[4] if redundant else 0
    return decode_data(data), flags


def newer_copy(flags1, flags2):
    """0 or 1: which of two valid redundant copies U-Boot and libubootenv load."""
    if flags1 == 255 and flags2 == 0:
        return 1
    if flags2 == 255 and flags1 == 0:
        return 0
    return 1 if flags2 > flags1 else 0


# --- fw_env.config -----------------------------------------------------------------------


def _hex(word, path, lineno):
    # libubootenv reads these as hex even without 0x, U-Boot's own fw_env as decimal: a bare
    # number above 9 is ambiguous, so we refuse it rather than pick one reading.
    low = word.lower()
    if low.startswith("0x"):
        try:
            return int(low, 16)
        except ValueError:
            pass
    elif len(low) == 1 and is_digits(low):
        return int(low)
    raise BootEnvError(
        "%s line %d: %r is not a 0x-prefixed hex number" % (path, lineno, word),
        hint="write offsets and sizes as hex with 0x (e.g. 0x4000): tools disagree on bare numbers",
    )


def parse_config(text, path="fw_env.config"):
    """[{"device", "offset", "size", "sector_size", "sectors"}] for one or two copies."""
    copies = []
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) < 3 or len(words) > 5:
            raise BootEnvError(
                "%s line %d: expected 'device offset size [sectorsize [numsectors]]'"
                % (path, lineno)
            )
        nums = [_hex(w, path, lineno) for w in words[1:]]
        copies.append(
            {
                "device": words[0],
                "offset": nums[0],
                "size": nums[1],
                "sector_size": nums[2] if len(nums) > 2 else 0,
                "sectors": nums[3] if len(nums) > 3 else 0,
            }
        )
    if not copies or len(copies) > 2:
        raise BootEnvError("%s must have one line (single) or two (redundant)" % path)
    if len(copies) == 2 and copies[0]["size"] != copies[1]["size"]:
        raise BootEnvError("%s: both copies must have the same size" % path)
    if copies[0]["size"] < 16:
        raise BootEnvError("%s: env size 0x%x is too small" % (path, copies[0]["size"]))
    return copies


def load_config(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise BootEnvError(
            "cannot read U-Boot env config %s: %s" % (path, e.strerror),
            hint="create it with 'device offset size' lines, as for fw_printenv",
        ) from None
    return parse_config(text, path)


# --- the environment ---------------------------------------------------------------------


class UBootEnv:
    """The env described by a fw_env.config (path) or by a list of copies (parse_config)."""

    def __init__(
        self, config=DEFAULT_CONFIG, copies=None, in_place=False, io=None, lock_file=LOCK_FILE
    ):
        self.config = config
        self.lock_file = lock_file
        self.lock_timeout = 10.0
        self.copies = copies if copies is not None else load_config(config)
        self.redundant = len(self.copies) == 2
        self.size = self.copies[0]["size"]
        # in_place: rewrite a single-copy file in place (e.g. a pflash image a running QEMU has
        # open, where a rename would swap the inode under it). Not power-safe.
        self.in_place = in_place
        self.io = io or FileIO()

    # -- reading --

    def _read_copy(self, copy):
        where = "%s at 0x%x" % (copy["device"], copy["offset"])
        try:
            blob = self.io.read(copy["device"], copy["offset"], self.size)
        except OSError as e:
            raise BootEnvError(
                "cannot read U-Boot env %s: %s" % (where, e.strerror),
                hint="check the device path in %s" % self.config,
            ) from None
        if len(blob) != self.size:
            raise BootEnvError(
                "U-Boot env %s is truncated: %d of 0x%x bytes" % (where, len(blob), self.size),
                hint="the device is smaller than %s says" % self.config,
            )
        return blob

    def read_state(self):
        """(variables, index of the active copy, flags of each copy as read)."""
        blobs = [self._read_copy(c) for c in self.copies]
        parsed = [parse_copy(b, self.redundant) for b in blobs]
        if not self.redundant:
            if parsed[0] is None:
                raise BootEnvError(
                    "U-Boot env in %s has a bad CRC" % self.copies[0]["device"],
                    hint="the env is corrupt or was never written; refusing to guess a slot",
                )
            return parsed[0][0], 0, [0]
        flags = [b[4] for b in blobs]
        if parsed[0] is None and parsed[1] is None:
            raise BootEnvError(
                "both copies of the redundant U-Boot env have a bad CRC",
                hint="the env is corrupt or never written; refusing to guess a slot",
            )
        if parsed[1] is None:
            active = 0
        elif parsed[0] is None:
            active = 1
        else:
            active = newer_copy(parsed[0][1], parsed[1][1])
        return parsed[active][0], active, flags

    def read(self):
        return self.read_state()[0]

    # -- writing --

    def write(self, changes=None, deletions=()):
        """Set `changes`, delete `deletions`, keep every other variable; one atomic step."""
        with self.locked():
            variables, active, flags = self.read_state()
            before = dict(variables)
            variables.update(changes or {})
            for key in deletions:
                variables.pop(key, None)
            if variables == before:
                return variables  # nothing to change: spare the flash a write cycle
            try:
                self.write_all(variables, active, flags)
            except OSError as e:
                raise BootEnvError(
                    "cannot write U-Boot env (%s): %s" % (self.config, e.strerror or e),
                    hint="check the device is writable; the previous env is still in place",
                ) from None
        return variables

    @contextlib.contextmanager
    def locked(self):
        """fw_setenv's lock, waited for up to lock_timeout seconds; none if it cannot exist."""
        try:
            fd = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT, 0o666) if self.lock_file else -1
        except OSError:
            fd = -1  # no /var/lock (or not ours): nothing else can be using it either
        try:
            deadline = time.monotonic() + self.lock_timeout
            while fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Transient(
                            "U-Boot env is locked by another writer (%s)" % self.lock_file,
                            hint="another fw_setenv is running; retry",
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # closing releases the flock

    def write_all(self, variables, active, flags):
        """Replace the whole env with `variables`, given the state read_state() returned."""
        if not self.redundant:
            self._write_single(encode_copy(variables, self.size, False))
            return
        target = 1 - active
        new_flag = (flags[active] + 1) % 256
        copy = self.copies[target]
        # Step 1: new CRC and data under the OLD flag byte. Until step 2 this copy is either
        # invalid (torn write, CRC mismatch) or valid but older, so the active copy still wins.
        blob = encode_copy(variables, self.size, True, flags[target])
        self.io.write(copy["device"], copy["offset"], blob)
        # Step 2: one byte, the commit point.
        self.io.write(copy["device"], copy["offset"] + 4, bytes([new_flag]))

    def format(self, variables):
        """Initialise a blank or corrupt env with `variables` (factory set-up, tests).

        Not power-safe by design: there is no valid old state to fall back to.
        """
        with self.locked():
            self._format(variables)

    def _format(self, variables):
        if not self.redundant:
            self._write_single(encode_copy(variables, self.size, False))
            return
        for index, flag in ((1, 0), (0, 1)):  # copy 0 with flag 1 wins, as mkenvimage -r
            copy = self.copies[index]
            self.io.write(
                copy["device"], copy["offset"], encode_copy(variables, self.size, True, flag)
            )

    def _write_single(self, blob):
        copy = self.copies[0]
        if self.in_place or not self.io.is_regular(copy["device"]):
            self.io.write(copy["device"], copy["offset"], blob)  # not power-safe (see docstring)
            return
        self.io.replace_region(copy["device"], copy["offset"], blob)


class FileIO:
    """The device access UBootEnv uses; tests swap it for one that records or tears writes."""

    def read(self, device, offset, size):
        with open(device, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def write(self, device, offset, data):
        """pwrite + fsync: when this returns, the bytes are on the medium."""
        fd = os.open(device, os.O_WRONLY)
        try:
            view = memoryview(data)
            pos = offset
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
            os.fsync(fd)
        finally:
            os.close(fd)

    def is_regular(self, device):
        return stat.S_ISREG(os.stat(device).st_mode)

    def replace_region(self, device, offset, data):
        """Write a copy of the whole file with `data` at `offset`, fsync, rename over it."""
        fd, tmp = create_temp(device)  # O_EXCL|O_NOFOLLOW: never a planted file or link
        with os.fdopen(fd, "wb") as dst, open(device, "rb") as src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
            dst.seek(offset)
            dst.write(data)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, stat.S_IMODE(os.stat(device).st_mode))
        os.replace(tmp, device)
        fsync_dir(os.path.dirname(os.path.abspath(device)))
