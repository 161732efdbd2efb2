"""The power-safe journal of the update journey: one JSON record, replaced atomically.

Invariant: after a power cut at any moment the file holds either the previous record or the
new one (agent/state/atomic.py: temp file, fsync, rename, fsync the directory). A record that cannot
be read back (corrupt, truncated, unknown format) is never guessed at: the file is renamed
aside for an engineer to look at and the agent starts idle, keeping no job it cannot trust.
An I/O error reading it (EIO, a directory in its place) is treated the same way: load() never
raises, so the daemon loop survives a damaged data partition.
"""

import json
import os

from agent.core.errors import UpdateError
from agent.core.jobs import JobMemory
from agent.core.journey import Journey
from agent.state.atomic import read_json, write_json_atomic


class JournalCorrupt(Exception):
    """The journal file exists but does not hold a usable record."""


class Journal:
    """The journal at `path`. `load()` never raises for bad content; see `problem`."""

    def __init__(self, path):
        self.path = path
        # Set by load() when the file was unusable: (message, path it was moved to).
        self.problem = None

    def save(self, journey):
        write_json_atomic(self.path, journey.to_record())

    def read_record(self):
        """The stored record, or None when there is no journal yet; JournalCorrupt if bad."""
        try:
            record = read_json(self.path)
        except (ValueError, UnicodeDecodeError) as e:
            raise JournalCorrupt("journal %s is not valid JSON: %s" % (self.path, e)) from None
        except OSError as e:  # EIO from the medium, a directory in its place, ...
            raise JournalCorrupt("journal %s cannot be read: %s" % (self.path, e)) from None
        if record is not None and not isinstance(record, dict):
            raise JournalCorrupt("journal %s does not hold a JSON object" % self.path)
        return record

    def load(self, trial_policy=None):
        """The saved Journey (idle when there is none, or when the file was unusable)."""
        self.problem = None
        try:
            record = self.read_record()
            if record is None:
                return Journey(JobMemory(), trial_policy)
            return Journey.from_record(record, trial_policy)
        except (JournalCorrupt, ValueError, KeyError, TypeError, UpdateError) as e:
            try:
                aside = self._move_aside()
            except OSError as moved:
                # The medium refuses even a rename: start idle, say so, keep no memory.
                self.problem = ("unusable journal (%s); could not move it aside (%s), starting "
                                "idle" % (e, moved.strerror or moved), None)  # fmt: skip
                return Journey(JobMemory(), trial_policy)
            self.problem = ("unusable journal (%s); moved to %s, starting idle" % (e, aside), aside)
            return Journey(_salvage_memory(aside), trial_policy)

    def _move_aside(self):
        n = 0
        while True:
            aside = "%s.corrupt-%d" % (self.path, n)
            if not os.path.lexists(aside):
                break
            n += 1
        os.rename(self.path, aside)  # rename, not replace: a directory moves aside too
        return aside


def _salvage_memory(path):
    """The job ids a damaged record still lists, so a replayed job stays ignored."""
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read())
        return JobMemory.from_list(record.get("memory"))
    except Exception:  # noqa: BLE001 - anything unreadable just means no memory to salvage
        return JobMemory()
