"""The trial verdict and the alarm baseline: when a new slot has earned its commit.

Invariant: a trial passes only when every required check reported success inside the window;
one failure, or a check still silent when the window ends, fails it, naming that check and its
evidence. Alarm comparisons flag new fault codes and a fault rate above the recorded baseline.

Check results are a dict name -> (ok, evidence) with ok True, False or None (no answer yet).
Checks are visited in sorted order so the named failure never depends on dict order.

Runs on MicroPython: plain classes and arithmetic.
"""

RUNNING = "running"
PASSED = "passed"
FAILED = "failed"

ROLLBACK = "rollback"
REPORT_ONLY = "report-only"


class TrialPolicy:
    """How long a trial may take and which checks it needs (names of check plug-ins)."""

    def __init__(self, window_s, required_checks):
        if not isinstance(window_s, int) or window_s <= 0:
            raise ValueError("trial window must be a positive number of seconds")
        if not required_checks:
            raise ValueError("a trial needs at least one check")
        self.window_s = window_s
        self.required_checks = sorted(required_checks)

    def expired(self, now, started_at):
        return now - started_at >= self.window_s

    def verdict(self, results, now, started_at):
        """(RUNNING | PASSED | FAILED, failing check or None, evidence or None)."""
        for name in self.required_checks:
            ok, evidence = _result(results, name)
            if ok is False:
                return (FAILED, name, evidence)
        missing = [n for n in self.required_checks if _result(results, n)[0] is not True]
        if not missing:
            return (PASSED, None, None)
        if self.expired(now, started_at):
            return (
                FAILED,
                missing[0],
                "no result within the %ds trial window (also waiting: %s)"
                % (self.window_s, ", ".join(missing[1:]) or "none"),
            )
        return (RUNNING, None, None)


def _result(results, name):
    value = results.get(name)
    if value is None:
        return (None, None)
    return (value[0], value[1] if len(value) > 1 else None)


# --- Alarm profile ---------------------------------------------------------------------------


def compare(baseline, observed, factor=2.0, slack_per_hour=1.0):
    """A regression finding, or None when `observed` is no worse than `baseline`.

    Both are {"codes": [fault codes seen], "rate_per_hour": faults per hour}. A regression is
    a code the baseline never had, or a rate above baseline * factor + slack (the slack keeps
    one stray fault on a quiet charger from counting as a storm)."""
    known = baseline.get("codes") or []
    new = sorted(c for c in (observed.get("codes") or []) if c not in known)
    if new:
        return {
            "kind": "new-fault-codes",
            "evidence": "fault codes not seen before the update: %s" % ", ".join(new),
            "codes": new,
        }
    base_rate = float(baseline.get("rate_per_hour") or 0.0)
    rate = float(observed.get("rate_per_hour") or 0.0)
    limit = base_rate * factor + slack_per_hour
    if rate > limit:
        return {
            "kind": "fault-rate",
            "evidence": "fault rate %.2f/h above limit %.2f/h (baseline %.2f/h)"
            % (rate, limit, base_rate),
            "rate_per_hour": rate,
        }
    return None


def compare_sessions(baseline, observed, slack=0.25, min_attempts=3):
    """A regression finding, or None, for charging-session outcomes.

    Both are {"started": n, "failed": m} (session starts that worked / that the charger
    refused or aborted). A regression is a failure ratio above the baseline's by more than
    `slack`, judged only once `min_attempts` starts were seen (one unlucky driver is not a
    trend)."""
    if not baseline or not observed:
        return None
    attempts = observed.get("started", 0) + observed.get("failed", 0)
    if attempts < min_attempts:
        return None
    base_attempts = baseline.get("started", 0) + baseline.get("failed", 0)
    base_ratio = float(baseline.get("failed", 0)) / base_attempts if base_attempts else 0.0
    ratio = float(observed.get("failed", 0)) / attempts
    if ratio > base_ratio + slack:
        return {
            "kind": "session-failures",
            "evidence": "%d of %d session starts failed (%.0f%%; before the update %.0f%%)"
            % (observed.get("failed", 0), attempts, ratio * 100, base_ratio * 100),
        }
    return None


def crash_loop(boot_count, restarts, max_boots=1, max_restarts=3):
    """Evidence of a crash loop, or None.

    boot_count: boots of the new slot since it was tried (from the bootloader's attempt
    counter); more than `max_boots` means it reset during the trial. restarts: how often the
    charging stack or agent was restarted by its supervisor since boot."""
    if boot_count > max_boots:
        return "new slot booted %d times during the trial (limit %d)" % (boot_count, max_boots)
    if restarts > max_restarts:
        return "services restarted %d times since boot (limit %d)" % (restarts, max_restarts)
    return None


# --- Observation period after commit ---------------------------------------------------------


class Observation:
    """After a commit the agent keeps comparing alarms and session outcomes with the
    baseline for `days` days; a regression is reported, and rolled back too when the policy
    says so."""

    def __init__(self, days, policy=REPORT_ONLY, factor=2.0, slack_per_hour=1.0):
        if policy not in (ROLLBACK, REPORT_ONLY):
            raise ValueError("observation policy must be %r or %r" % (ROLLBACK, REPORT_ONLY))
        self.period_s = int(days * 86400)
        self.policy = policy
        self.factor = factor
        self.slack_per_hour = slack_per_hour

    def over(self, now, committed_at):
        return now - committed_at >= self.period_s

    def review(self, now, committed_at, baseline, observed, previous_slot_intact=True):
        """(finding or None, decision) with decision None, REPORT_ONLY or ROLLBACK.

        After the period nothing is flagged; a rollback is only decided while the previous
        slot is still intact, otherwise the regression is reported only."""
        if self.over(now, committed_at):
            return (None, None)
        finding = compare(baseline, observed, self.factor, self.slack_per_hour)
        if finding is None:
            finding = compare_sessions(baseline.get("sessions"), observed.get("sessions"))
        if finding is None:
            return (None, None)
        if self.policy == ROLLBACK and previous_slot_intact:
            return (finding, ROLLBACK)
        return (finding, REPORT_ONLY)
