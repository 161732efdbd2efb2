"""Accept or refuse a verified manifest for this device: expiry, model, hardware, anti-rollback.

Invariant: check_manifest() returns only if every rule holds; each broken rule raises its own
Rejected subclass with a message an operator can act on. Call it only on a manifest whose
signature was verified. Pure: the clock and the installed security version are passed in.
"""

from agent.core import timefmt
from agent.core.errors import Downgrade, Expired, VersionMismatch, WrongHardware, WrongModel


def check_expiry(manifest, now):
    if now >= manifest.expires:
        raise Expired(
            "bundle %s expired at %s (device time %s)"
            % (manifest.version, timefmt.format(manifest.expires), timefmt.format(now)),
            hint="ask for a re-signed bundle, or check the device clock",
        )


def check_device(manifest, device):
    model = device.get("model")
    revision = device.get("hardware_revision")
    revisions = None
    for entry in manifest.compatible:
        if entry["model"] == model:
            revisions = entry["hardware_revisions"]
    if revisions is None:
        models = ", ".join(sorted(e["model"] for e in manifest.compatible))
        raise WrongModel(
            "bundle %s is for %s, this device is %s" % (manifest.version, models, model),
            hint="use the bundle built for model %s" % model,
        )
    if revision not in revisions:
        raise WrongHardware(
            "bundle %s fits %s hardware revisions %s, this device is %s"
            % (manifest.version, model, ", ".join(sorted(revisions)), revision),
            hint="use a bundle built for hardware revision %s" % revision,
        )


def check_security_version(manifest, installed_security_version):
    # Equal is allowed (re-install, or a feature release without a security fix); lower is the
    # rollback attack: an old, validly signed image with a known hole.
    if installed_security_version is not None and (
        manifest.security_version < installed_security_version
    ):
        raise Downgrade(
            "bundle %s has security version %d, below the installed %d"
            % (manifest.version, manifest.security_version, installed_security_version),
            hint="install a release with security_version >= %d" % installed_security_version,
        )


def check_manifest(manifest, device, now, installed_security_version):
    """Raise Expired, WrongModel, WrongHardware or Downgrade; return None when acceptable.

    device: {"model": str, "hardware_revision": str}; now: epoch seconds.
    """
    check_expiry(manifest, now)
    check_device(manifest, device)
    check_security_version(manifest, installed_security_version)


def check_version(job_version, manifest_version):
    """The version a job announces must be the signed one: every status reports it, and an
    operator reading `Committed 9.9.9` for a 1.1.0 bundle is misled (VersionMismatch). Here,
    not in jobs.py: the MicroPython agent checks it while the journey's modules (jobs among
    them) are off the heap (agent/mpy/park.py), and this module is loaded then, also when its
    install step checks a header without the manifest's parser (agent/mpy/header.py)."""
    if job_version is not None and job_version != manifest_version:
        raise VersionMismatch(
            "the job announces version %r but the signed bundle is version %s"
            % (job_version, manifest_version),
            "fix the job's version or its URL",
        )
