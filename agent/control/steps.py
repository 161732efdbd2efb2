"""The long steps of an update, run by the daemon in a worker thread: each returns the
journey event its outcome means (agent/core/lifecycle.py) and never raises for a failure
of the update itself, so the daemon only has to post the result.

Streaming install: `download` fetches and parses the signed header only, `verify` checks
signatures and device policy, `install` streams the payloads into the inactive slot.
"""

import logging

from agent.bundle.reader import open_bundle
from agent.checks import CheckFailed, load_checks
from agent.core import lifecycle as lc
from agent.core.errors import (
    BadSignature,
    BootEnvError,
    ConfigError,
    ReadbackMismatch,
    Rejected,
    UnknownKey,
    UpdateError,
)
from agent.transfer import installer
from agent.transfer.fetch import open_source

log = logging.getLogger("charger-update")
SIGNATURE_ERRORS = (BadSignature, UnknownKey)
# The board's own state is unreadable (boot env, slot records, floors): not the bundle's fault.
# These escape the step; the daemon stops the step and retries it once someone repaired it.
LOCAL_ERRORS = (BootEnvError, ConfigError)


def info(error):
    return {"reason": error.reason, "detail": error.message, "transient": bool(error.retry)}


def download(url, cfg):
    """(event, info, envelope): the signed header, kept by the daemon for `verify`."""
    try:
        with open_source(url, cfg.download) as source:
            _, envelope = open_bundle(source.read)
        return lc.DOWNLOAD_OK, {}, envelope
    except UpdateError as e:
        return lc.DOWNLOAD_ERROR, info(e), None


def verify(envelope, url, cfg, trust, now, slots=None):
    """Check the downloaded header; fetch it again only when there is none (after a restart
    the journey resumes at Downloaded with nothing in memory). slots: the board's SlotState
    (its floor is the anti-rollback bound)."""
    try:
        if envelope is None:
            with open_source(url, cfg.download) as source:
                installer.read_manifest(source, trust, cfg, now, slots)
        else:
            installer.check_envelope(envelope, trust, cfg, now, slots)
        return lc.SIGNATURE_OK, {}
    except LOCAL_ERRORS:
        raise
    except Rejected as e:
        return lc.SIGNATURE_BAD, info(e)
    except UpdateError as e:
        return lc.DOWNLOAD_ERROR, info(e)


def install(url, cfg, boot, trust, now, progress):
    try:
        installer.install(url, cfg, boot, trust, now=now, progress_factory=progress.start)
        return lc.INSTALL_OK, {}
    except LOCAL_ERRORS:
        raise
    except SIGNATURE_ERRORS as e:
        return lc.SIGNATURE_BAD, info(e)
    except ReadbackMismatch as e:
        return lc.VERIFY_ERROR, info(e)
    except UpdateError as e:
        return lc.INSTALL_ERROR, info(e)


def run_checks(ctx, names, reported):
    """{name: (passed, evidence)} for every check; reported(name, passed, evidence) after
    each one. A check that crashes fails; it never takes the daemon down."""
    results = {}
    for name in names:
        try:
            check = load_checks([name])[0]
        except UpdateError as e:  # misnamed or broken plug-in: the check fails, loudly
            results[name] = (False, {"problem": e.message})
            reported(name, False, results[name][1])
            continue
        try:
            results[check.name] = (True, check.run(ctx))
        except CheckFailed as e:
            results[check.name] = (False, e.evidence)
        except UpdateError as e:
            results[check.name] = (False, {"problem": e.message})
        except Exception as e:  # an OEM check's bug fails the check, not the daemon
            log.exception("check %s crashed", check.name)
            results[check.name] = (False, {"problem": "check crashed: %r" % e})
        passed, evidence = results[check.name]
        log.info("check %s: %s", check.name, "pass" if passed else "FAIL")
        reported(check.name, passed, evidence)
    return results


class StatusProgress:
    """Installing progress as a callback every 10 % (the daemon turns it into a status).
    A delta install (format 2) sets `downloaded`; each step then also carries the bytes
    downloaded so far and the payload size, so operators see the saving."""

    def __init__(self, on_step):
        self.on_step = on_step
        self.total = 1
        self.done_bytes = 0
        self.next_step = 10
        self.downloaded = None  # bytes the delta install fetched so far

    def start(self, total, label):
        self.total = max(total, 1)
        return self

    def update(self, n):
        self.done_bytes += n
        percent = self.done_bytes * 100 // self.total
        if percent >= self.next_step:
            self.next_step = percent // 10 * 10 + 10
            if self.downloaded is None:
                self.on_step(percent)
            else:
                self.on_step(percent, {"downloaded": self.downloaded, "payload_bytes": self.total})

    def done(self):
        pass
