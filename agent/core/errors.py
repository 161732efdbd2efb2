"""Every failure the agent reports is exactly one of two kinds.

Rejected: the input itself is wrong (bad signature, wrong hardware, downgrade); retrying the
same input can never succeed. Transient: something outside was briefly unavailable (network,
broker, disk busy); back off and retry. Each class carries a stable `reason` (used in status
messages and the journal) and a CLI exit code, so an operator and a CSMS see the same words.

Runs on MicroPython: plain classes, no exception chaining, no keyword-only tricks.
"""


class UpdateError(Exception):
    reason = "error"
    exit_code = 1
    retry = False

    def __init__(self, message, hint=None):
        super().__init__(message)  # MicroPython: Exception has no __init__ attribute
        self.message = message
        # What the operator should do about it; shown after the message.
        self.hint = hint

    def __str__(self):
        if self.hint:
            return "%s (%s)" % (self.message, self.hint)
        return self.message


class Rejected(UpdateError):
    """The input is wrong: never retry it."""

    retry = False


class Transient(UpdateError):
    """The world was briefly unavailable: back off and retry."""

    reason = "transient"
    exit_code = 75  # EX_TEMPFAIL
    retry = True


# --- Rejected: trust -------------------------------------------------------------------------


class BadSignature(Rejected):
    reason = "bad-signature"
    exit_code = 10


class UnknownKey(Rejected):
    reason = "unknown-key"
    exit_code = 11


class Expired(Rejected):
    reason = "expired"
    exit_code = 12


class NotYetValid(Expired):
    """Signed with a `created` time too far ahead of this device's "now" (a signer's clock, or
    this device's RTC, is wrong): refused rather than trusted as a new floor of time."""

    reason = "not-yet-valid"


class Downgrade(Rejected):
    reason = "downgrade"
    exit_code = 13


class RootRolledBack(Downgrade):
    """The device's trusted root is older than the newest root it has trusted before (its
    rotated roots were deleted or replaced): keys those roots revoked must stay revoked."""

    reason = "root-rollback"


class WrongModel(Rejected):
    reason = "wrong-model"
    exit_code = 14


class WrongHardware(Rejected):
    reason = "wrong-hardware"
    exit_code = 15


# --- Rejected: content -----------------------------------------------------------------------


class PayloadMismatch(Rejected):
    """A payload's length or sha256 differs from what the signed manifest promised."""

    reason = "payload-mismatch"
    exit_code = 16


class Truncated(Rejected):
    reason = "truncated"
    exit_code = 17


class NoSpace(Rejected):
    reason = "no-space"
    exit_code = 18


class MalformedBundle(Rejected):
    reason = "malformed"
    exit_code = 19


class ReadbackMismatch(Rejected):
    """What reads back from the slot is not what was written: the medium is suspect."""

    reason = "readback-mismatch"
    exit_code = 22


# --- Rejected: local set-up ------------------------------------------------------------------


class ConfigError(Rejected):
    reason = "config"
    exit_code = 20


class BootEnvError(Rejected):
    """The boot environment is corrupt or unreadable; never guess a slot from it."""

    reason = "boot-env"
    exit_code = 21


class MalformedJob(Rejected):
    reason = "malformed-job"
    exit_code = 23


class BadSource(Rejected):
    """The bundle's location can never work: a missing or non-regular local file, a scheme
    or a path a job may not use. Unlike a network failure, retrying does not help."""

    reason = "bad-source"
    exit_code = 24


class VersionMismatch(Rejected):
    """The job announced another version than the signed manifest carries."""

    reason = "version-mismatch"
    exit_code = 25


# --- Transient -------------------------------------------------------------------------------


class NetworkError(Transient):
    reason = "network"


class BrokerUnavailable(Transient):
    reason = "broker"


class StateBusy(Transient):
    """Another process holds the state dir's lock (an install, a boot change): try later."""

    reason = "busy"
