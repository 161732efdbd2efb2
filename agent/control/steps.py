"""The long steps of an update, run by the daemon in a worker thread: each returns the
journey event its outcome means (agent/core/lifecycle.py) and never raises for a failure
of the update itself, so the daemon only has to post the result.

Streaming install: `download` fetches and parses the signed header only, `verify` checks
signatures and device policy, `install` streams the payloads into the inactive slot.
"""

import functools
import logging

from agent.bundle.reader import open_bundle
from agent.checks import CheckFailed, load_checks
from agent.core import lifecycle as lc
from agent.core.errors import (
    BadSignature,
    BadSource,
    ReadbackMismatch,
    Rejected,
    UnknownKey,
    UpdateError,
)
from agent.transfer import installer
from agent.transfer.fetch import open_job_source

log = logging.getLogger("charger-update")
SIGNATURE_ERRORS = (BadSignature, UnknownKey)


class DeadlinePassed(Rejected):
    """The job's deadline passed while its download or install was running."""

    reason = "deadline"


class StepAbandoned(Rejected):
    """The daemon dropped the step (cancel, a failed action, shutdown): its worker stops."""

    reason = "abandoned"


# Failures of getting the bytes, whichever step meets them: never an invalid signature.
TRANSFER_ERRORS = (BadSource, DeadlinePassed, StepAbandoned)


def info(error):
    return {"reason": error.reason, "detail": error.message, "transient": bool(error.retry)}


def download(url, cfg, stopper=None):
    """(event, info, envelope): the signed header, kept by the daemon for `verify`."""
    try:
        with open_job_source(url, cfg.download, stopper=stopper) as source:
            _, envelope = open_bundle(source.read)
        return lc.DOWNLOAD_OK, {}, envelope
    except UpdateError as e:
        return lc.DOWNLOAD_ERROR, info(e), None


def verify(envelope, url, cfg, trust, now, version=None, stopper=None):
    """Check the downloaded header, and that it is the `version` the job announced; fetch it
    again only when there is none (after a restart the journey resumes at Downloaded with
    nothing in memory)."""
    try:
        if envelope is None:
            with open_job_source(url, cfg.download, stopper=stopper) as source:
                manifest, _ = installer.read_manifest(source, trust, cfg, now)
        else:
            manifest = installer.check_envelope(envelope, trust, cfg, now)
        installer.check_version(manifest, version)
        return lc.SIGNATURE_OK, {}
    except TRANSFER_ERRORS as e:
        return lc.DOWNLOAD_ERROR, info(e)
    except Rejected as e:
        return lc.SIGNATURE_BAD, info(e)
    except UpdateError as e:
        return lc.DOWNLOAD_ERROR, info(e)


def install(url, cfg, boot, trust, now, progress, version=None, stopper=None):
    try:
        installer.install(
            url, cfg, boot, trust, now=now, progress_factory=progress.start,
            source_opener=functools.partial(open_job_source, stopper=stopper), version=version,
        )  # fmt: skip
        return lc.INSTALL_OK, {}
    except SIGNATURE_ERRORS as e:
        return lc.SIGNATURE_BAD, info(e)
    except ReadbackMismatch as e:
        return lc.VERIFY_ERROR, info(e)
    except UpdateError as e:
        return lc.INSTALL_ERROR, info(e)


def run_checks(ctx, names, reported, configured=None):
    """{name: (passed, evidence)} for every check; reported(name, passed, evidence) after
    each one. A check that crashes fails; it never takes the daemon down. `configured`: the
    config's check list; a name neither in it nor registered fails without being loaded."""
    results = {}
    for name in names:
        try:
            check = load_checks([name], configured)[0]
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
    """Installing progress as a callback every 10 % (the daemon turns it into a status)."""

    def __init__(self, on_step):
        self.on_step = on_step
        self.total = 1
        self.done_bytes = 0
        self.next_step = 10

    def start(self, total, label):
        self.total = max(total, 1)
        return self

    def update(self, n):
        self.done_bytes += n
        percent = self.done_bytes * 100 // self.total
        if percent >= self.next_step:
            self.next_step = percent // 10 * 10 + 10
            self.on_step(percent)

    def done(self):
        pass
