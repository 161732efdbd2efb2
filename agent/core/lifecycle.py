"""The update journey as one table: every legal move is a row in TRANSITIONS, nothing else.

A state changes only through `next_state(state, event)`; an event a state does not list is an
error, never a silent no-op. RESUME says where a journey saved before a power cut continues,
STATUS how each state is reported (OCPP FirmwareStatus plus the agent's trial states).

Runs on MicroPython: strings and tuples only, no enum, no reliance on dict order.
"""

# --- States (the values are what the journal stores) -----------------------------------------

IDLE = "idle"
DOWNLOAD_SCHEDULED = "download-scheduled"
DOWNLOADING = "downloading"
DOWNLOADED = "downloaded"
SIGNATURE_VERIFIED = "signature-verified"
INSTALL_SCHEDULED = "install-scheduled"
INSTALLING = "installing"
INSTALLED = "installed"
REBOOTING = "rebooting"
TRIAL = "trial"
COMMITTED = "committed"
ROLLED_BACK = "rolled-back"
DOWNLOAD_FAILED = "download-failed"
INVALID_SIGNATURE = "invalid-signature"
INSTALLATION_FAILED = "installation-failed"
INSTALL_VERIFICATION_FAILED = "install-verification-failed"
CANCELLED = "cancelled"

STATES = (
    IDLE,
    DOWNLOAD_SCHEDULED,
    DOWNLOADING,
    DOWNLOADED,
    SIGNATURE_VERIFIED,
    INSTALL_SCHEDULED,
    INSTALLING,
    INSTALLED,
    REBOOTING,
    TRIAL,
    COMMITTED,
    ROLLED_BACK,
    DOWNLOAD_FAILED,
    INVALID_SIGNATURE,
    INSTALLATION_FAILED,
    INSTALL_VERIFICATION_FAILED,
    CANCELLED,
)

# A journey in one of these is over: its job id is spent, the next job starts from IDLE.
TERMINAL = (
    COMMITTED,
    ROLLED_BACK,
    DOWNLOAD_FAILED,
    INVALID_SIGNATURE,
    INSTALLATION_FAILED,
    INSTALL_VERIFICATION_FAILED,
    CANCELLED,
)

# --- Events (a small closed set; failure events end in _ERROR so they never clash with states)

JOB_ACCEPTED = "job-accepted"
TIME_REACHED = "time-reached"  # the schedule says go (and no charging session is active)
SESSION_ACTIVE = "session-active"  # the schedule would go, but a car is charging: defer
WINDOW_EXPIRED = "window-expired"  # job deadline passed, or trial window ran out
RETRY = "retry"  # a transient download/install error with retries left
DOWNLOAD_OK = "download-ok"
DOWNLOAD_ERROR = "download-error"
SIGNATURE_OK = "signature-ok"
SIGNATURE_BAD = "signature-bad"
INSTALL_OK = "install-ok"
INSTALL_ERROR = "install-error"
VERIFY_ERROR = "verify-error"  # the slot read back differs from what was written
REBOOTED_INTO_NEW = "rebooted-into-new"
REBOOTED_INTO_OLD = "rebooted-into-old"
CHECKS_PASSED = "checks-passed"
CHECKS_FAILED = "checks-failed"
POWER_LOST = "power-lost"  # a power loss (or a reset of unknown cause) interrupted the trial
CRASHED = "crashed"  # a watchdog or panic reset of the new slot interrupted the trial
BOOT_ENV_LOST = "boot-env-lost"  # back on the old slot, yet the new one has attempts left
CANCEL = "cancel"
SUPERSEDE = "supersede"  # a new job replaces this one (allowed until the slot switch)
DONE = "done"  # nothing more to do in this state: move on

EVENTS = (
    JOB_ACCEPTED,
    TIME_REACHED,
    SESSION_ACTIVE,
    WINDOW_EXPIRED,
    RETRY,
    DOWNLOAD_OK,
    DOWNLOAD_ERROR,
    SIGNATURE_OK,
    SIGNATURE_BAD,
    INSTALL_OK,
    INSTALL_ERROR,
    VERIFY_ERROR,
    REBOOTED_INTO_NEW,
    REBOOTED_INTO_OLD,
    CHECKS_PASSED,
    CHECKS_FAILED,
    POWER_LOST,
    CRASHED,
    BOOT_ENV_LOST,
    CANCEL,
    SUPERSEDE,
    DONE,
)

# --- The journey: (from, event, to), one row per line -----------------------------------------
# The tables are flat tuples read a row at a time (rows(), next_state()): on a MicroPython board
# a nested table took a tuple object per row, 64 bytes of heap for a 3-tuple, and these tables
# are built again at every read-back of the journey (3.2 KiB more, docs/micropython.md).
# fmt: off
TRANSITIONS = (
    IDLE,               JOB_ACCEPTED,      DOWNLOAD_SCHEDULED,
    DOWNLOAD_SCHEDULED, TIME_REACHED,      DOWNLOADING,
    DOWNLOAD_SCHEDULED, WINDOW_EXPIRED,    DOWNLOAD_FAILED,
    DOWNLOAD_SCHEDULED, SESSION_ACTIVE,    DOWNLOAD_SCHEDULED,  # job waits for no session
    DOWNLOAD_SCHEDULED, CANCEL,            CANCELLED,
    DOWNLOADING,        DOWNLOAD_OK,       DOWNLOADED,
    DOWNLOADING,        RETRY,             DOWNLOAD_SCHEDULED,
    DOWNLOADING,        DOWNLOAD_ERROR,    DOWNLOAD_FAILED,
    DOWNLOADING,        CANCEL,            CANCELLED,
    DOWNLOADED,         SIGNATURE_OK,      SIGNATURE_VERIFIED,
    DOWNLOADED,         SIGNATURE_BAD,     INVALID_SIGNATURE,
    # After a restart the header is fetched again to verify it: that fetch can fail too.
    DOWNLOADED,         RETRY,             DOWNLOAD_SCHEDULED,
    DOWNLOADED,         DOWNLOAD_ERROR,    DOWNLOAD_FAILED,
    DOWNLOADED,         CANCEL,            CANCELLED,
    SIGNATURE_VERIFIED, DONE,              INSTALL_SCHEDULED,
    SIGNATURE_VERIFIED, CANCEL,            CANCELLED,
    INSTALL_SCHEDULED,  TIME_REACHED,      INSTALLING,
    INSTALL_SCHEDULED,  SESSION_ACTIVE,    INSTALL_SCHEDULED,
    INSTALL_SCHEDULED,  WINDOW_EXPIRED,    INSTALLATION_FAILED,
    INSTALL_SCHEDULED,  CANCEL,            CANCELLED,
    INSTALLING,         INSTALL_OK,        INSTALLED,
    INSTALLING,         RETRY,             INSTALL_SCHEDULED,
    INSTALLING,         INSTALL_ERROR,     INSTALLATION_FAILED,
    INSTALLING,         SIGNATURE_BAD,     INVALID_SIGNATURE,
    INSTALLING,         VERIFY_ERROR,      INSTALL_VERIFICATION_FAILED,
    INSTALLED,          TIME_REACHED,      REBOOTING,
    INSTALLED,          SESSION_ACTIVE,    INSTALLED,
    REBOOTING,          REBOOTED_INTO_NEW, TRIAL,
    REBOOTING,          REBOOTED_INTO_OLD, ROLLED_BACK,
    REBOOTING,          BOOT_ENV_LOST,     REBOOTING,    # try the new slot again (bounded)
    TRIAL,              CHECKS_PASSED,     COMMITTED,
    TRIAL,              CHECKS_FAILED,     ROLLED_BACK,
    TRIAL,              WINDOW_EXPIRED,    ROLLED_BACK,
    TRIAL,              REBOOTED_INTO_OLD, ROLLED_BACK,  # attempts used up: bootloader fell back
    TRIAL,              POWER_LOST,        TRIAL,        # resume: checks and window start again
    TRIAL,              CRASHED,           ROLLED_BACK,  # watchdog/panic: fail at once
    TRIAL,              BOOT_ENV_LOST,     REBOOTING,    # e.g. a torn env reset to defaults
    COMMITTED,          CHECKS_FAILED,     ROLLED_BACK,  # regression while observing
    COMMITTED,          DONE,              IDLE,
    ROLLED_BACK,        DONE,              IDLE,
    DOWNLOAD_FAILED,    DONE,              IDLE,
    INVALID_SIGNATURE,  DONE,              IDLE,
    INSTALLATION_FAILED, DONE,             IDLE,
    INSTALL_VERIFICATION_FAILED, DONE,     IDLE,
    CANCELLED,          DONE,              IDLE,
    # A new job replaces the running one until the inactive slot is handed to the bootloader.
    DOWNLOAD_SCHEDULED, SUPERSEDE,         CANCELLED,
    DOWNLOADING,        SUPERSEDE,         CANCELLED,
    DOWNLOADED,         SUPERSEDE,         CANCELLED,
    SIGNATURE_VERIFIED, SUPERSEDE,         CANCELLED,
    INSTALL_SCHEDULED,  SUPERSEDE,         CANCELLED,
    INSTALLING,         SUPERSEDE,         CANCELLED,
    INSTALLED,          SUPERSEDE,         CANCELLED,
)

# State saved before a power cut -> state to continue in. REBOOTING and INSTALLED are settled
# by the booted slot (see journey.resume); INSTALLING restarts after the half-written inactive
# slot has been marked bad; TRIAL on the new slot is settled by the reset cause: POWER_LOST
# (power-on, reboot, unknown) or CRASHED (watchdog, panic); an agent restart within the same
# boot reruns the checks, the window counting from the saved start.
RESUME = (
    IDLE,               IDLE,
    DOWNLOAD_SCHEDULED, DOWNLOAD_SCHEDULED,
    DOWNLOADING,        DOWNLOAD_SCHEDULED,  # restart the download
    DOWNLOADED,         DOWNLOADED,          # verify again
    SIGNATURE_VERIFIED, INSTALL_SCHEDULED,   # the installer verifies again while streaming
    INSTALL_SCHEDULED,  INSTALL_SCHEDULED,
    INSTALLING,         INSTALL_SCHEDULED,   # after mark_bad(inactive slot)
    INSTALLED,          INSTALLED,           # booted new: TRIAL (try_slot had happened)
    REBOOTING,          REBOOTING,           # booted new: TRIAL; booted old: ROLLED_BACK
    TRIAL,              TRIAL,               # booted old: ROLLED_BACK; else by reset cause
    COMMITTED,          COMMITTED,
    ROLLED_BACK,        ROLLED_BACK,
    DOWNLOAD_FAILED,    DOWNLOAD_FAILED,
    INVALID_SIGNATURE,  INVALID_SIGNATURE,
    INSTALLATION_FAILED, INSTALLATION_FAILED,
    INSTALL_VERIFICATION_FAILED, INSTALL_VERIFICATION_FAILED,
    CANCELLED,          CANCELLED,
)

# How each state is reported: OCPP FirmwareStatus, plus TrialRunning/Committed/RolledBack.
STATUS = (
    IDLE,               "Idle",
    DOWNLOAD_SCHEDULED, "DownloadScheduled",
    DOWNLOADING,        "Downloading",
    DOWNLOADED,         "Downloaded",
    SIGNATURE_VERIFIED, "SignatureVerified",
    INSTALL_SCHEDULED,  "InstallScheduled",
    INSTALLING,         "Installing",
    INSTALLED,          "Installed",
    REBOOTING,          "InstallRebooting",
    TRIAL,              "TrialRunning",
    COMMITTED,          "Committed",
    ROLLED_BACK,        "RolledBack",
    DOWNLOAD_FAILED,    "DownloadFailed",
    INVALID_SIGNATURE,  "InvalidSignature",
    INSTALLATION_FAILED, "InstallationFailed",
    INSTALL_VERIFICATION_FAILED, "InstallVerificationFailed",
    CANCELLED,          "Idle",  # OCPP has no Cancelled status; the reason says "cancelled"
)
# fmt: on

# What a journey's last status can be (a cancelled one ends as Idle with reason "cancelled").
FINAL_STATUSES = (
    "Committed",
    "RolledBack",
    "InvalidSignature",
    "InstallationFailed",
    "InstallVerificationFailed",
    "DownloadFailed",
)

# The retry path of a download reports DownloadPaused rather than DownloadScheduled.
DOWNLOAD_PAUSED = "DownloadPaused"


class IllegalTransition(Exception):
    """A programming error in the driver: the table has no row for (state, event)."""

    def __init__(self, state, event):
        super().__init__("no transition from state %r on event %r" % (state, event))
        self.state = state
        self.event = event


def rows(table, width):
    """The rows of a flat table as tuples: TRANSITIONS is 3 wide, RESUME and STATUS 2."""
    return [tuple(table[i : i + width]) for i in range(0, len(table), width)]


def _lookup(pairs, key, what):
    for i in range(0, len(pairs), 2):
        if pairs[i] == key:
            return pairs[i + 1]
    raise ValueError("unknown %s %r" % (what, key))


def next_state(state, event):
    """The state after `event` in `state`; IllegalTransition when the table has no such row."""
    for i in range(0, len(TRANSITIONS), 3):
        if TRANSITIONS[i] == state and TRANSITIONS[i + 1] == event:
            return TRANSITIONS[i + 2]
    if state not in STATES:
        raise ValueError("unknown state %r" % (state,))
    raise IllegalTransition(state, event)


def resume_state(saved):
    """The state to continue in after a power cut in `saved`."""
    return _lookup(RESUME, saved, "state")


def status_of(state):
    """The status string reported for `state`."""
    return _lookup(STATUS, state, "state")


def events_from(state):
    """The events `state` accepts, in table order."""
    return [TRANSITIONS[i + 1] for i in range(0, len(TRANSITIONS), 3) if TRANSITIONS[i] == state]


def is_terminal(state):
    return state in TERMINAL
