"""Trial checks as plug-ins: each answers "does this part of the charger still work?".

A check is a class with a `name` and `run(ctx) -> evidence dict` that raises CheckFailed
(with evidence) when the part is broken. Built-in checks are listed in BUILTIN; an OEM adds
one by naming "package.module:Class" in `[trial] checks` or by registering an entry point in
the group `charger_update.checks`. ctx is a TrialContext: what a check may talk to.

Invariant: code is loaded only from names the config file lists or that are registered
(built-ins, entry points). A job may add registered or configured names; it never names code.
"""

import importlib

from agent.core.errors import ConfigError

ENTRY_POINT_GROUP = "charger_update.checks"
BUILTIN = {
    "communication": "agent.checks.communication:Communication",
    "charging-session": "agent.checks.session:ChargingSession",
    "alarms": "agent.checks.alarms:Alarms",
    "components": "agent.checks.components:Components",
}


class CheckFailed(Exception):
    def __init__(self, message, evidence=None):
        Exception.__init__(self, message)
        self.evidence = dict(evidence or {}, problem=message)


class TrialContext:
    """What checks may use: cfg (agent Config), channel, stack, baseline, clock, wait,
    csms_links."""

    def __init__(self, cfg, channel, stack, baseline, clock, trial_started_at, wait, restarts=0,
                 csms_links=()):  # fmt: skip
        self.cfg = cfg
        self.channel = channel
        self.stack = stack
        self.baseline = baseline or {}
        self.clock = clock
        self.trial_started_at = trial_started_at
        # wait(seconds) -> False when the daemon is stopping; checks never call time.sleep.
        self.wait = wait
        # How often the agent itself was restarted during this trial (a crash loop signal).
        self.restarts = restarts
        # Front-ends whose stack owns the CSMS connection: boot_accepted(timeout) -> evidence
        # that the CSMS accepted this boot's BootNotification (agent/frontends/ocpp).
        self.csms_links = list(csms_links)

    def options(self, name):
        """The [trial.<name>] table of the config."""
        return dict(self.cfg.section("trial").get(name, {}))


def _entry_points():
    try:
        from importlib.metadata import entry_points
    except ImportError:  # pragma: no cover
        return {}
    eps = entry_points()
    group = (
        eps.select(group=ENTRY_POINT_GROUP)
        if hasattr(eps, "select")
        else eps.get(ENTRY_POINT_GROUP, ())
    )
    return dict((ep.name, ep.value) for ep in group)


def job_check_names(configured):
    """The names a job may add to its trial: the configured checks and the registered ones
    (built-ins, entry points). Anything else in a job is refused, never imported."""
    return sorted(set(configured) | set(BUILTIN) | set(_entry_points()))


def load_check(name, configured=None):
    """The check called `name`. With `configured` (the config's list), a 'package.module:Class'
    name loads only if the config lists it: names from a job never reach the importer."""
    spec = BUILTIN.get(name) or _entry_points().get(name)
    if spec is None and configured is not None and name not in configured:
        raise ConfigError(
            "trial check %r is neither configured nor registered on this charger" % name,
            hint="list it in [trial] checks or register it as an entry point",
        )
    spec = spec or name
    if ":" not in spec:
        raise ConfigError(
            "unknown trial check %r" % name,
            hint="use one of %s or 'package.module:Class'" % ", ".join(sorted(BUILTIN)),
        )
    module, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError("trial check %r (%s) cannot be loaded: %s" % (name, spec, e)) from None
    check = cls()
    check.name = name
    return check


def load_checks(names, configured=None):
    return [load_check(n, configured) for n in names]
