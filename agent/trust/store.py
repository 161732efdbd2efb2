"""The device's trust store: the provisioned root, the chain of rotated roots, verification.

Invariant: the root in use is the provisioned root (self-signed by its root role) followed by
every rotated root persisted in the state dir as STATE/trusted-root.N.json, each re-verified
at load as version N signed by a threshold of root N-1's root keys and of its own: a root
written to the data partition is trusted only if it chains, version by version, from the
provisioned one. A chain that ends below the newest root version the device has trusted (the
root floor, kept with the other floors also in the boot environment) is refused loudly
(RootRolledBack): keys a newer root revoked stay revoked. The chain is reloaded when its files
change, so a daemon always verifies with the newest root. Every time check takes "now" as
max(clock, not-before floor) (agent/core/floors.py).
"""

import logging
import os
import time

from agent.core import floors as floors_core
from agent.core import keyring, policy, timefmt
from agent.core.envelope import MAX_ENVELOPE, ROOT_TYPE, Envelope, parse_envelope
from agent.core.errors import ConfigError, Downgrade, Expired, RootRolledBack, UpdateError
from agent.core.manifest import parse_manifest
from agent.state import statedir
from agent.state.atomic import write_atomic
from agent.state.floors import Floors

log = logging.getLogger("charger-update")

CHAIN_NAME = "trusted-root.%d.json"  # one file per rotated version, never the provisioned file
LEGACY_NAME = "trusted-root.json"  # the newest rotated root, as agents before the chain kept it
DEFAULT_SYNC_FILE = "/var/lib/systemd/timesync/clock"  # systemd-timesyncd touches it on sync


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read(MAX_ENVELOPE + 1)  # parse_envelope refuses anything that long
    except OSError as e:
        raise ConfigError(
            "cannot read trusted root %s: %s" % (path, e.strerror),
            hint='set [trust] root = "/path/root.json" in the agent config',
        ) from None


def verify_key(key, sig, data):
    """crypto.verify_key, with `cryptography` imported at the first signature checked: a
    daemon that has not verified anything yet does not carry it (idle memory, issue 12)."""
    from agent.trust import crypto

    return crypto.verify_key(key, sig, data)


def load_root_file(path, verify_fn=verify_key):
    """A root envelope file -> keyring.Root, verified under its own root role."""
    return keyring.load_trusted(parse_envelope(_read(path), ROOT_TYPE), verify_fn)


def _peek_root(path):
    """The root a file holds, its signatures NOT checked (lazy Trust's status), or None."""
    try:
        return keyring.parse_root(parse_envelope(_read(path), ROOT_TYPE).payload)
    except UpdateError:
        return None


def chain_path(state_dir, version):
    return os.path.join(state_dir, CHAIN_NAME % version)


class Trust:
    """root_path: the provisioned root; state_dir: where rotated roots are kept (None: the
    provisioned root only); floors: agent.state.floors.Floors (None: no device floors, as
    for `bundle verify --root`); sync_file: a file whose mtime is the last time sync.

    lazy=True (the daemon): the root files are checked for shape at once (a missing or
    malformed root is a config error at start), their signatures at the first use that needs
    them: a bundle or root to verify, or a changed chain. Until then status() and problem()
    read the versions the files state; nothing is ever accepted under an unverified root."""

    def __init__(
        self,
        root_path,
        state_dir=None,
        clock=time.time,
        verify_fn=verify_key,
        floors=None,
        max_ahead_s=floors_core.MAX_AHEAD_S,
        sync_file=None,
        lazy=False,
    ):
        self.clock = clock
        self.verify_fn = verify_fn
        self.state_dir = state_dir
        self.floors = floors
        self.max_ahead_s = max_ahead_s
        self.sync_file = sync_file
        self.root_path = root_path
        self._provisioned = None
        self._root = None  # the verified chain's newest root, once loaded
        self.chain_problem = None  # a rotated-root file that does not chain, if any
        self._stamp = None
        if lazy:
            self._peeked = keyring.parse_root(parse_envelope(_read(root_path), ROOT_TYPE).payload)
        else:
            self.refresh()

    @property
    def provisioned(self):
        if self._provisioned is None:
            self._provisioned = load_root_file(self.root_path, self.verify_fn)
        return self._provisioned

    @property
    def root(self):
        """The root in use: the newest one that chains, signatures checked."""
        return self.refresh()

    @classmethod
    def from_config(cls, config, clock=time.time, boot=None, lazy=False):
        """[trust] root: the provisioned root; rotated roots in STATE_DIR; the floors in the
        state dir and, given `boot` (a BootControl), in the boot environment; [time]."""
        root = config.trust.get("root")
        if not root:
            raise ConfigError(
                "%s: [trust] root is not set" % config.path,
                hint='add [trust] root = "root.json" (the release root this device trusts)',
            )
        max_ahead, sync_file = time_options(config)
        return cls(
            config.resolve(root), config.state_dir, clock=clock,
            floors=Floors(config.state_dir, boot), max_ahead_s=max_ahead, sync_file=sync_file,
            lazy=lazy,
        )  # fmt: skip

    # -- the chain of roots -------------------------------------------------------------------

    def _chain_files(self):
        if not self.state_dir:
            return ()
        try:
            names = os.listdir(self.state_dir)
        except OSError:
            return ()
        stamp = []
        for name in sorted(names):
            if name.startswith("trusted-root.") and name.endswith(".json"):
                try:
                    st = os.stat(os.path.join(self.state_dir, name))
                except OSError:
                    continue
                stamp.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    def refresh(self):
        """Reload the chain when its files changed (e.g. `charger-update root update` run by
        another process while the daemon runs); returns the root in use."""
        stamp = self._chain_files()
        if self._root is None or stamp != self._stamp:
            self._root, self.chain_problem = self._load_chain()
            self._stamp = stamp
            if self.chain_problem:
                log.error("%s", self.chain_problem)
        return self._root

    def _version(self):
        """The root version in use; for a lazy Trust that has verified nothing yet, the one
        its files state (the chain is verified before anything is accepted under it)."""
        if self._root is not None:
            return self.refresh().version
        version = self._peeked.version
        while self.state_dir:
            nxt = _peek_root(chain_path(self.state_dir, version + 1))
            if nxt is None or nxt.version != version + 1:
                break
            version = nxt.version
        return version

    def _load_chain(self):
        root = self.provisioned
        if not self.state_dir:
            return root, None
        while True:
            path = chain_path(self.state_dir, root.version + 1)
            if not os.path.lexists(path):
                break
            try:
                root = self._next(root, _read(path))
            except UpdateError as e:
                return root, "%s does not chain from root version %d: %s" % (
                    path, root.version, e.message
                )  # fmt: skip
        legacy = os.path.join(self.state_dir, LEGACY_NAME)
        if os.path.lexists(legacy):
            try:
                root = self._next(root, _read(legacy))
            except UpdateError as e:
                if not isinstance(e, Downgrade):  # an older copy: already in the chain
                    return root, "%s does not chain from root version %d: %s" % (
                        legacy, root.version, e.message
                    )  # fmt: skip
        return root, None

    def _next(self, root, raw):
        return keyring.update_root(root, parse_envelope(raw, ROOT_TYPE), self.verify_fn)

    # -- time and floors ------------------------------------------------------------------------

    def _floors(self):
        return self.floors.read() if self.floors is not None else floors_core.empty()

    def sync_time(self, clock=None):
        """The last time sync (the sync file's mtime), or 0 when unknown or implausible."""
        if not self.sync_file:
            return 0
        clock = self.clock() if clock is None else clock
        try:
            synced_at = int(os.stat(self.sync_file).st_mtime)
        except OSError:
            return 0
        return floors_core.sync_time(synced_at, clock, self.max_ahead_s)

    def _time(self, now, floors):
        """(clock, not_before, effective now) for one decision."""
        clock = int(self.clock() if now is None else now)
        not_before = max(
            floors["not_before"], self.provisioned.created, self.root.created,
            self.sync_time(clock),
        )  # fmt: skip
        return clock, not_before, floors_core.effective_now(clock, not_before)

    def now(self, now=None):
        """Epoch seconds for trust decisions: the clock (or `now`), never below the floor."""
        return self._time(now, self._floors())[2]

    def status(self):
        """For the inventory row: the root in use, the newest seen, and what is wrong."""
        floors = self._floors()
        return {
            "root_version": self._version(),
            "root_floor": floors["root_version"],
            "not_before": floors["not_before"],
            "problem": self.problem(floors),
        }

    def problem(self, floors=None):
        """Why bundles are refused whatever they carry, or None."""
        floors = self._floors() if floors is None else floors
        version = self._version()
        if version < floors["root_version"]:
            return (
                "trusted root version %d is older than version %d this device has trusted "
                "before%s" % (version, floors["root_version"],
                              ": " + self.chain_problem if self.chain_problem else
                              " (its rotated roots were deleted)")
            )  # fmt: skip
        return None

    def _check_root(self, floors):
        problem = self.problem(floors)
        if problem:
            raise RootRolledBack(
                problem,
                hint="re-apply root versions %d..%d with `charger-update root update`"
                % (self.root.version + 1, floors["root_version"]),
            )

    # -- verification -----------------------------------------------------------------------------

    def _verified(self, envelope, now):
        if not isinstance(envelope, Envelope):
            envelope = parse_envelope(envelope)
        self.refresh()
        floors = self._floors()
        self._check_root(floors)
        clock, not_before, now = self._time(now, floors)
        keyring.check_root_expiry(self.root, now)
        manifest = parse_manifest(keyring.verify_release(self.root, envelope, self.verify_fn))
        what = "bundle %s" % manifest.version
        floors_core.check_created(manifest.created, what, clock, not_before, self.max_ahead_s)
        return manifest, now

    def verify_envelope(self, envelope, now=None):
        """Envelope (or its bytes) -> Manifest, if the release threshold verified."""
        return self._verified(envelope, now)[0]

    def verify(self, envelope, device=None, installed_security_version=None, now=None):
        """verify_envelope plus policy: expiry always, model/hardware if device, anti-rollback
        if installed_security_version is not None."""
        manifest, now = self._verified(envelope, now)
        policy.check_expiry(manifest, now)
        if device is not None:
            policy.check_device(manifest, device)
        policy.check_security_version(manifest, installed_security_version)
        return manifest

    # -- rotation ---------------------------------------------------------------------------------

    def update_root(self, envelopes, now=None):
        """Apply root envelopes (bytes) N+1, N+2, ... in order; persist each; return the root.

        Each is persisted as soon as it chains (TUF order): what a newer root revoked stays
        revoked even if a later one in the list is refused. A final root that has expired is
        applied all the same and reported as Expired saying so (bundles are refused until a
        newer root arrives), never as if nothing had changed.
        """
        self.refresh()
        floors = self._floors()
        clock, not_before, _ = self._time(now, floors)
        root, newest = self.root, 0
        for raw in envelopes:
            new = self._next(root, raw)
            what = "root version %d" % new.version
            floors_core.check_created(new.created, what, clock, not_before, self.max_ahead_s)
            if self.state_dir:
                statedir.ensure(self.state_dir)
                write_atomic(chain_path(self.state_dir, new.version), raw)
            root = self._root = new
            newest = max(newest, new.created)
            if self.floors is not None:
                self.floors.raise_to(root_version=new.version, not_before=newest)
        self._stamp = self._chain_files()
        now = self.now(now)
        if envelopes and now >= root.expires:
            raise Expired(
                "root version %d was applied (it chains from the previous root), but it expired"
                " at %s" % (root.version, timefmt.format(root.expires)),
                hint="bundles are refused until root version %d is applied (or check the "
                "device clock)" % (root.version + 1),
            )
        keyring.check_root_expiry(root, now)
        return root


def time_options(config):
    """([time] max_ahead_s, [time] sync_file or None) from the agent config."""
    section = config.section("time")
    max_ahead = section.get("max_ahead_s", floors_core.MAX_AHEAD_S)
    if not isinstance(max_ahead, int) or isinstance(max_ahead, bool) or max_ahead < 0:
        raise ConfigError(
            "%s: [time] max_ahead_s must be an integer >= 0 (seconds), not %r"
            % (config.path, max_ahead)
        )
    sync_file = section.get("sync_file", DEFAULT_SYNC_FILE)
    if not isinstance(sync_file, str):
        raise ConfigError('%s: [time] sync_file must be a path or ""' % config.path)
    return max_ahead, (config.resolve(sync_file) if sync_file else None)
