"""The journey's long steps on the board (download, verify, install, trial checks, the alarm
baseline), each imported and run inside its own phase (agent/mpy/phase.py) by the agent, so
this module and what it imports leave the heap when the step ends.

Each function takes the Agent (agent/mpy/agent.py) and returns (event, info) for the journey,
except run_checks (the results) and baseline (the profile). A Rejected error is the journey's
rejection event; anything else propagates to the agent's step runner, which makes it the
step's failure event.

Invariant: nothing returned from here holds an object of a class a phase imported (plain
dicts, strings and numbers only), so dropping the phase's modules frees them.
"""

import time

from agent.core.errors import BadSignature, ReadbackMismatch, Rejected, UnknownKey, UpdateError
from agent.mpy.channel import HEALTH

SIGNATURE_ERRORS = (BadSignature, UnknownKey)
# The journey's events the steps return (agent/core/lifecycle.py's values; the verify and
# install steps run while lifecycle is parked, agent/mpy/park.py). tests/micropython checks
# that they are lifecycle's.
DOWNLOAD_OK, DOWNLOAD_ERROR = "download-ok", "download-error"
SIGNATURE_OK, SIGNATURE_BAD = "signature-ok", "signature-bad"
INSTALL_OK, VERIFY_ERROR = "install-ok", "verify-error"


class DeadlinePassed(Rejected):
    """The job's deadline passed while its download, verify or install ran (the Linux
    daemon's agent/transfer/stopper.py twin; here, so an idle board does not hold it)."""

    reason = "deadline"


def _info(error):
    return {"reason": error.reason, "detail": error.message, "transient": bool(error.retry)}


def download(agent):
    """Fetch the job's signed header (always: what an earlier fetch left may be another
    bundle's) and keep it on flash for the verify and install steps' later VMs."""
    agent.envelope = _fetch_header(agent)
    _keep_header(agent, agent.envelope)
    return DOWNLOAD_OK, {}


def verify(agent):
    """SIGNATURE_OK (its verdict kept for the install, agent/mpy/signed.py), or SIGNATURE_BAD
    for a rejected header or one without exactly one payload for the board's slot class;
    DOWNLOAD_ERROR when the header, fetched again when none is kept, cannot be had (a server
    gone, the job's deadline, the network: retried while the job has retries); the heap
    raises (the agent recovers)."""
    from agent.mpy import header

    try:
        raw = _header(agent)
    except UpdateError as e:
        return DOWNLOAD_ERROR, _info(e)
    try:
        header.verify(agent.trust, raw, agent.device, agent.board.floor(), time.time(),
                      agent.journey.job.version, agent.cfg.get("slot_class", "app"))  # fmt: skip
    except Rejected as e:
        return SIGNATURE_BAD, _info(e)
    from agent.mpy.store import write_atomic

    write_atomic(_pin_path(agent), {"job_id": agent.journey.job.id, "sha256": _sha256(raw)})
    return SIGNATURE_OK, {}


def _pin_path(agent):
    """verified.json: the SHA-256 of the header the verify step passed, by job. The install
    takes only that header, also when it fetches it again (header.bin lost or another
    job's): another one, however well signed, was never verified for this job."""
    return agent.cfg.get("state_dir", "data") + "/verified.json"


def _sha256(raw):
    import binascii
    import hashlib

    return binascii.hexlify(hashlib.sha256(raw).digest()).decode()


def _pinned(agent, raw, job):
    """PayloadMismatch unless `raw` is the header the verify step passed for `job` (none
    pinned for it: a journal from before the pin, checked in full as before)."""
    from agent.mpy.store import read_json

    try:
        pin = read_json(_pin_path(agent)) or {}
    except ValueError:  # not JSON (a damaged flash): no pin, the header checked in full
        pin = {}
    if pin.get("job_id") == job.id and pin.get("sha256") != _sha256(raw):
        from agent.core.errors import PayloadMismatch

        raise PayloadMismatch("the bundle's signed header changed since it was verified")


def _progress(agent, job):
    marks = [10]

    def progress(done, total):
        percent = done * 100 // max(total, 1)
        if percent >= marks[0]:
            marks[0] = percent // 10 * 10 + 10
            agent.report("Installing", {"job_id": job.id, "version": job.version,
                                        "progress": percent})  # fmt: skip

    return progress


def _header(agent):
    """The raw signed header of the job's bundle: the one the download step fetched (kept in
    RAM, and on flash for a new VM or boot), or fetched again when neither holds it."""
    if agent.envelope is None:
        agent.envelope = _kept_header(agent) or _fetch_header(agent)
    return agent.envelope


def _fetch_header(agent):
    from agent.mpy import header

    return header.fetch_header(agent.journey.job.url, agent.timeout(), agent.poller(),
                               agent.download_tls, agent.max_time())  # fmt: skip


def _header_path(agent):
    return agent.cfg.get("state_dir", "data") + "/header.bin"


def _keep_header(agent, raw):
    """header.bin: a line with the job's id and the SHA-256 of `raw`, then `raw`. The verify
    and install steps' VMs read it instead of fetching the header again: no HTTP code and
    no connection on their heap (the verify step's VM interned 25 names fewer at 96K,
    docs/micropython.md's qstr pools). Written aside and renamed, so a cut leaves the old
    file or this one; a failed write only costs a fetch (the old file goes: it may hold this
    job's earlier fetch, and the bundle may have changed since)."""
    import os

    path = _header_path(agent)
    try:
        with open(path + ".tmp", "wb") as f:
            f.write(("%s %s\n" % (agent.journey.job.id, _sha256(raw))).encode())
            f.write(raw)
        os.rename(path + ".tmp", path)
    except OSError as e:
        print("header not kept: %r" % e)
        try:
            os.remove(path)
        except OSError:
            pass


def _kept_header(agent):
    """The header kept for this job, if whole; None otherwise (another job's, damaged, or
    none: fetched again)."""
    import os

    from agent.core.envelope import MAX_ENVELOPE

    path = _header_path(agent)
    try:
        size = os.stat(path)[6]
        with open(path, "rb") as f:
            line = f.readline(256)
            n = size - len(line)
            # Another job's, or more than an envelope: not read (read(n) takes n bytes of
            # heap at once, and a MemoryError here would fail the step, not fetch again).
            if not (line.startswith(("%s " % agent.journey.job.id).encode())
                    and 0 < n <= MAX_ENVELOPE):  # fmt: skip
                return None
            raw = f.read(n)
    except OSError:
        return None
    if line != ("%s %s\n" % (agent.journey.job.id, _sha256(raw))).encode():
        return None
    return raw


def install(agent, slot):
    """Check the header again (its own phase, no connection open: header.check on the kept
    verdict), then stream the bundle into the slot, its header checked against the checked
    bytes (another phase)."""
    job = agent.journey.job
    agent.board.set_slot(slot, {"state": "writing", "incoming": job.version})
    options = dict(agent.cfg.get("install", {}), timeout_s=agent.timeout(),
                   tls=agent.download_tls, max_time_s=agent.max_time(),
                   slot_class=agent.cfg.get("slot_class", "app"))  # fmt: skip
    partition = agent.boot.partition(slot)
    write = agent.phase("install-write")  # made first: the check splits the heap (phase.py)
    try:
        with agent.phase("install-check"):
            facts = _check(agent, partition, options, job)
        with write:
            _write(agent, facts, partition, options, job)
    except SIGNATURE_ERRORS as e:
        return SIGNATURE_BAD, _info(e)
    except ReadbackMismatch as e:
        return VERIFY_ERROR, _info(e)
    agent.board.set_slot(slot, {"state": "installed", "version": facts["version"],
                                "security_version": facts["security_version"]})  # fmt: skip
    return INSTALL_OK, {}


# Each phase's module is imported inside a function of its own, so no frame of install() still
# holds it (and the heap it takes) after the phase dropped it.
def _check(agent, partition, options, job):
    from agent.mpy import header

    raw = _header(agent)
    _pinned(agent, raw, job)
    return header.check(agent.trust, raw, agent.device, agent.board.floor(), time.time(),
                        partition.info()[3], options, job.version)  # fmt: skip


def _write(agent, facts, partition, options, job):
    from agent.mpy import installer

    installer.write(job.url, facts, partition, options, _progress(agent, job), agent.poller(),
                    agent.window_room)  # fmt: skip


def run_checks(agent, step):
    """{name: (passed, evidence)} of the trial's checks; TrialRunning after each one and the
    health round at the end."""
    from agent.mpy import checks

    job = agent.journey.job
    data = agent.journey.data

    def wait(seconds):
        return agent.wait(seconds, step)

    ctx = checks.Context(agent.cfg.get("trial", {}), agent.channel, agent.stack,
                         data.get("baseline"), wait)  # fmt: skip

    def reported(name, passed, evidence):
        agent.report("TrialRunning", {"job_id": job.id, "version": job.version, "check": name,
                                      "passed": passed, "evidence": evidence})  # fmt: skip

    results = checks.run(agent.journey.policy().required_checks, ctx, reported)
    verdict = "pass" if all(r[0] for r in results.values()) else "fail"
    agent.channel.publish(HEALTH, {
        "job_id": job.id, "phase": "trial", "slot": data.get("new_slot"), "verdict": verdict,
        "checks": [{"name": n, "passed": bool(r[0]), "evidence": r[1]}
                   for n, r in results.items()],
        "ts": int(time.time()),
    })  # fmt: skip
    return results


def baseline(stack):
    from agent.mpy import checks

    return checks.baseline(stack)
