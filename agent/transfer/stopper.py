"""Stopping a step's transfers from another thread: the daemon's cancel, the job's deadline,
a superseding request, shutdown. Sources (agent/transfer/fetch.py, ranges.py) attach to the
step's Stopper; `stop(error)` shuts their sockets and cuts their back-offs, and every later
read raises `error`.

Kept apart from the sources so the daemon holds a Stopper without importing the network and
bundle code behind them (an idle charger needs none of it, issue 12).
"""

import threading

from agent.core.errors import Rejected


class DeadlinePassed(Rejected):
    """The job's deadline passed while its download or install was running."""

    reason = "deadline"


class StepAbandoned(Rejected):
    """The daemon dropped the step (cancel, a failed action, shutdown): its worker stops."""

    reason = "abandoned"


class Stopper:
    """Stops the transfers of one step from another thread (the daemon: cancel, job deadline).
    Sources opened with it attach themselves; one opened after the stop fails at once."""

    def __init__(self):
        self.error = None
        self._sources = []
        self._lock = threading.Lock()

    def attach(self, source):
        with self._lock:
            self._sources.append(source)
            error = self.error
        if error is not None:
            source.stop(error)

    def stop(self, error):
        with self._lock:
            if self.error is not None:
                return
            self.error = error
            sources = list(self._sources)
        for source in sources:
            source.stop(error)
