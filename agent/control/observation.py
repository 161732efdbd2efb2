"""The observation period after a commit: keep comparing the alarm profile and the
charging-session outcomes with the baseline recorded before the install.

Invariant: while the period runs the journey stays in COMMITTED (a new job still ends it);
each review looks only at alarms raised since the previous review (kept in the journal, so
also across restarts), so one old fault is never counted twice; the decision itself is
agent.core.trial.Observation's.
"""

from agent.checks.alarms import profile
from agent.core.errors import UpdateError
from agent.core.trial import REPORT_ONLY, Observation


class Observer:
    """[observation] days (0: off), policy ("report-only" | "rollback"), interval_s."""

    def __init__(self, options, stack, clock):
        self.days = float(options.get("days", 0))
        self.policy = Observation(
            self.days,
            options.get("policy", REPORT_ONLY),
            float(options.get("factor", 2.0)),
            float(options.get("slack_per_hour", 1.0)),
        )
        self.interval_s = float(options.get("interval_s", 3600))
        self.stack = stack
        self.clock = clock
        self.last_review = None

    def active(self, journey):
        committed_at = journey.data.get("committed_at")
        if self.days <= 0 or committed_at is None:
            return False
        return not self.policy.over(self.clock(), committed_at)

    def due(self):
        return self.last_review is None or self.clock() >= self.last_review + self.interval_s

    def next_review(self, journey):
        """When the next review is due, or the period ends if that comes first."""
        end = journey.data["committed_at"] + self.policy.period_s
        if self.last_review is None:
            return self.clock()
        return min(self.last_review + self.interval_s, end)

    def review(self, journey, previous_slot_intact):
        """(finding or None, decision) for the alarms since the last review."""
        now = self.clock()
        # Saved in the journey (and so in the journal): a restart never counts a fault twice.
        since = journey.data.get("observed_until") or journey.data["committed_at"]
        journey.data["observed_until"] = self.last_review = now
        try:
            observed = profile(self.stack.alarms(), since, now)
            observed["sessions"] = self.stack.sessions()
        except UpdateError:
            return None, None  # the stack is unreachable right now; next review tries again
        baseline = journey.data.get("baseline") or {"codes": [], "rate_per_hour": 0.0}
        return self.policy.review(
            now, journey.data["committed_at"], baseline, observed, previous_slot_intact
        )
