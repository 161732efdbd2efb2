"""The long steps of an update, run by the daemon in a worker thread: each returns the
journey event its outcome means (agent/core/lifecycle.py) and never raises for a failure
of the update itself, so the daemon only has to post the result.

Streaming install: `download` fetches and parses the signed header only (by a bounded Range
request, so no payload byte crosses the link for it), `verify` checks signatures and device
policy, `install` streams the payloads into the inactive slot (format 1, as the manifest
verified before says, at once; format 2 by ranges, agent/transfer/delta.py).

A job with a detached signature (OCPP: signature + signing certificate over the whole file)
streams the whole file in `download` to hash it, `verify` checks the certificate against the
firmware-signing roots, the signature over that digest and the bundle's own signed manifest
(both must pass: the detached signature alone never makes a file installable), and
`install` hashes again what it streams into the slot and checks the signature over that
before INSTALL_OK, so the slot handed to the bootloader holds exactly the signed bytes.
"""

import functools
import logging

from agent.checks import CheckFailed, load_checks
from agent.core import lifecycle as lc
from agent.core.errors import (
    BadSignature,
    BadSource,
    BootEnvError,
    ConfigError,
    MalformedBundle,
    ReadbackMismatch,
    Rejected,
    UnknownKey,
    UpdateError,
)
from agent.core.manifest import parse_manifest
from agent.transfer import delta, installer, wholefile
from agent.transfer.fetch import open_job_source
from agent.transfer.ranges import open_job_ranges
from agent.transfer.stopper import DeadlinePassed, StepAbandoned
from agent.trust.manufacturer import CertificateProblem

log = logging.getLogger("charger-update")
SIGNATURE_ERRORS = (BadSignature, UnknownKey, CertificateProblem)
# The board's own state is unreadable (boot env, slot records, floors): not the bundle's fault.
# These escape the step; the daemon stops the step and retries it once someone repaired it.
LOCAL_ERRORS = (BootEnvError, ConfigError)


# Failures of getting the bytes, whichever step meets them: never an invalid signature.
TRANSFER_ERRORS = (BadSource, DeadlinePassed, StepAbandoned)


def info(error):
    return {"reason": error.reason, "detail": error.message, "transient": bool(error.retry)}


def download(url, cfg, stopper=None):
    """(event, info, envelope): the signed header, kept by the daemon for `verify`."""
    try:
        _, envelope = delta.read_envelope(url, cfg.download, _ranges_opener(stopper))
        return lc.DOWNLOAD_OK, {}, envelope
    except UpdateError as e:
        return lc.DOWNLOAD_ERROR, info(e), None


def verify(envelope, url, cfg, trust, now, version=None, stopper=None, slots=None):
    """Check the downloaded header, and that it is the `version` the job announced; fetch it
    again only when there is none (after a restart the journey resumes at Downloaded with
    nothing in memory). slots: the board's SlotState (its floor is the anti-rollback bound)."""
    try:
        if envelope is None:
            _, envelope = delta.read_envelope(url, cfg.download, _ranges_opener(stopper))
        manifest = installer.check_envelope(envelope, trust, cfg, now, slots)
        installer.check_version(manifest, version)
        return lc.SIGNATURE_OK, {}
    except LOCAL_ERRORS:
        raise
    except TRANSFER_ERRORS as e:
        return lc.DOWNLOAD_ERROR, info(e)
    except Rejected as e:
        return lc.SIGNATURE_BAD, info(e)
    except UpdateError as e:
        return lc.DOWNLOAD_ERROR, info(e)


def install(url, cfg, boot, trust, now, progress, version=None, stopper=None, envelope=None):
    """The streamed or by-ranges install of a job's bundle; every byte comes through the job
    URL rules (open_job_source, open_job_ranges) and the step's stopper. envelope: the one
    the download step read (None after a restart): its manifest's format spares a format-1
    install the Range request for the bundle's head."""
    try:
        done = installer.install(
            url, cfg, boot, trust, now=now, progress_factory=progress.start,
            source_opener=functools.partial(open_job_source, stopper=stopper), version=version,
            ranges_opener=_ranges_opener(stopper), bundle_format=_format(envelope),
        )  # fmt: skip
        unread = installer.without_readback(done.manifest, cfg)
        if unread:  # the config's choice, said where the operator reads the install's log
            log.warning("slot %s: %s written without read-back ([readback] in %s)",
                        done.slot, ", ".join(unread), cfg.path)  # fmt: skip
        return lc.INSTALL_OK, {}
    except LOCAL_ERRORS:
        raise
    except SIGNATURE_ERRORS as e:
        return lc.SIGNATURE_BAD, info(e)
    except ReadbackMismatch as e:
        return lc.VERIFY_ERROR, info(e)
    except UpdateError as e:
        return lc.INSTALL_ERROR, info(e)


def fetch(job, cfg, stopper=None):
    """The download step for `job`: (event, info, what verify needs: the signed header, or
    for a detached-signature job the whole file's digest and header)."""
    if job.signature is not None:
        return download_whole(job, cfg, stopper)
    return download(job.url, cfg, stopper)


def check(job, learned, cfg, trust, roots, now, slots=None, stopper=None):
    """The verify step for `job`, given what fetch() learned (None after a restart)."""
    if job.signature is not None:
        return verify_whole(job, learned, cfg, trust, roots, now, slots, stopper)
    return verify(learned, job.url, cfg, trust, now, job.version, stopper, slots)


def write(job, cfg, boot, trust, roots, now, progress, learned=None, stopper=None):
    """The install step for `job`, given what fetch() learned (None after a restart)."""
    if job.signature is not None:
        return install_whole(job, cfg, boot, trust, roots, now, progress, stopper)
    return install(job.url, cfg, boot, trust, now, progress, job.version, stopper, learned)


def _ranges_opener(stopper):
    return functools.partial(open_job_ranges, stopper=stopper)


def _format(envelope):
    """The bundle format the (already verified) manifest in `envelope` names, or None."""
    if envelope is None:
        return None
    try:
        return parse_manifest(envelope.payload).format
    except UpdateError:
        return None


def download_whole(job, cfg, stopper=None):
    """(event, info, (digest, envelope) or None): the whole file, hashed (detached jobs)."""
    limit = int(cfg.section("ocpp_firmware").get("max_firmware_bytes", wholefile.DEFAULT_MAX_BYTES))
    try:
        opener = functools.partial(open_job_source, stopper=stopper)
        digest, _, envelope = wholefile.fetch(job.url, cfg.download, limit, opener)
        return lc.DOWNLOAD_OK, {}, (digest, envelope)
    except UpdateError as e:
        return lc.DOWNLOAD_ERROR, info(e), None


def verify_whole(job, whole, cfg, trust, roots, now, slots=None, stopper=None):
    """Certificate, detached signature over the whole file, then the bundle's manifest (and
    the version the job announced, if any); the file is fetched and hashed again when nothing
    is in memory (after a restart)."""
    if whole is None:
        event, problem, whole = download_whole(job, cfg, stopper)
        if whole is None:
            return lc.SIGNATURE_BAD if not problem["transient"] else event, problem
    digest, envelope = whole
    try:
        try:
            roots.verify(digest, job.signature, job.signing_certificate, now)
        except MalformedBundle as e:  # a signature that is not base64: an invalid signature
            raise BadSignature(e.message, hint=e.hint) from None
        if envelope is None:
            raise MalformedBundle(
                "%s is not a charger-update bundle" % job.url,
                hint="the detached signature alone never makes a file installable: "
                "publish a signed bundle",
            )
        manifest = installer.check_envelope(envelope, trust, cfg, now, slots)
        installer.check_version(manifest, job.version)
        return lc.SIGNATURE_OK, {}
    except LOCAL_ERRORS:
        raise
    except TRANSFER_ERRORS as e:
        return lc.DOWNLOAD_ERROR, info(e)
    except Rejected as e:
        return lc.SIGNATURE_BAD, info(e)
    except UpdateError as e:
        return lc.DOWNLOAD_ERROR, info(e)


def install_whole(job, cfg, boot, trust, roots, now, progress, stopper=None):
    """install() that hashes every byte it streams and checks the detached signature over
    them before INSTALL_OK (else SIGNATURE_BAD: the slot stays marked bad)."""
    sources = []

    def opener(location, settings):
        sources.append(wholefile.HashingSource(open_job_source(location, settings, stopper)))
        return sources[-1]

    try:
        installer.install(job.url, cfg, boot, trust, now=now, progress_factory=progress.start,
                          source_opener=opener, version=job.version)  # fmt: skip
        roots.verify(sources[-1].digest(), job.signature, job.signing_certificate, now)
        return lc.INSTALL_OK, {}
    except LOCAL_ERRORS:
        raise
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
    """Installing progress as a callback every 10 % (the daemon turns it into a status).
    A delta install (format 2) sets `downloaded`; each step then also carries the bytes
    downloaded so far and the payload size, so operators see the saving. check(), called for
    every chunk, may raise to stop the write at once (a superseded job: its worker must not go
    on writing the slot the next job will write)."""

    def __init__(self, on_step, check=None):
        self.on_step = on_step
        self.check = check
        self.total = 1
        self.done_bytes = 0
        self.next_step = 10
        self.downloaded = None  # bytes the delta install fetched so far

    def start(self, total, label):
        self.total = max(total, 1)
        return self

    def update(self, n):
        if self.check is not None:
            self.check()
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
