"""The operator's errors: one line saying what is wrong and what to do, and an exit code.

Invariant: the CLI turns a FleetError into that line and its exit code, never a traceback.
Like the agent: rejected (fix the input, do not retry) or transient (retry later)."""


class FleetError(Exception):
    exit_code = 1
    retry = False

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self):
        return "%s (%s)" % (self.message, self.hint) if self.hint else self.message


class SpecError(FleetError):
    """A rollout or sites file that cannot be used as written."""

    exit_code = 2


class NotFound(FleetError):
    exit_code = 3


class Blocked(FleetError):
    """The rollout cannot go on as asked (a pilot cell without a charger, a gate, a state)."""

    exit_code = 4


class Unavailable(FleetError):
    """Database, broker or release server unreachable: retry later."""

    exit_code = 75
    retry = True
