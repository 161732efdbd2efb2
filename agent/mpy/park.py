"""Parking: the journey's code leaves the heap while a step that does not need it runs.

The download, verify and install steps hold the heap's peaks (the signature checks, the
inflate window) and read of the journey only its job's id, URL, version and deadline. `park`
keeps those as plain values (a Parked, the agent's journey meanwhile), takes the agent/core
modules only the journey uses out of sys.modules and collects: their functions, classes and
tables go. After the step the agent reads the journey back from the journal, which imports
them again (from flash on a ROMFS or frozen build: bytecode and names stay there, only their
objects are made again). This module itself is imported only inside the step's phase, or
for an idle park, after which it leaves sys.modules too. The journey is also parked while
the board idles with no job (Agent.park_idle; a job or cancel brings it back at once,
Agent.unpark), while the trial checks run (they read its job, checks, baseline and new
slot as plain values), and before a resume after a failed action loads the journal's
(Agent.resume: the heap need not hold two journeys).

Invariant: the journal holds the journey while it is parked: the journey saves before every
step it starts (agent/core/journey.py), and nothing saves while parked, as nothing outside the
step runs: a job or cancel arriving meanwhile waits in the inbox and is handled after the
step, as the journey would have handled it during the step (a cancel the journey would take
ends the step at its next poll). Nothing else holds an object of a parked module: the agent
(agent/mpy/agent.py) and agent/mpy/store.py import their functions and classes inside
functions, never at module level.
"""

import gc

from agent.mpy import phase

# What the journey needs and neither step does (errors, text, timefmt and semver stay: the
# verifiers and the manifest parser use them).
MODULES = (
    "agent.core.journey",
    "agent.core.lifecycle",
    "agent.core.jobs",
    "agent.core.trial",
    "agent.core.resets",
    "agent.core.schedule",
)


class Job:
    """The job's facts a step reads (agent.journey.job while parked)."""

    def __init__(self, job):
        self.id, self.url, self.version = job.id, job.url, job.version
        self.deadline = job.deadline


class Parked:
    """The journey as a step sees it, in plain values: its state and status, the job's facts,
    the deadline that stops the step (None if none does), whether a cancel is taken; the
    inbox holds (kind, payload) of what arrived meanwhile."""

    def __init__(self, journey, deadline, status):
        from agent.core import lifecycle as lc

        state = journey.state
        self.state, self.deadline, self.status = state, deadline, status
        self.job = Job(journey.job) if journey.job is not None else None
        self.cancellable = not lc.is_terminal(state) and lc.CANCEL in lc.events_from(state)
        self.inbox = []
        self.idle = False  # parked while idle (park_idle): a job or cancel unparks at once

    def policy(self):
        """Of the trial policy, what the checks read (required_checks; parked with trial)."""
        return self

    def cancels(self, job_id):
        """Whether the journey takes a cancel of `job_id` (Journey.cancel's rule)."""
        return self.cancellable and self.job is not None and self.job.id == job_id


def park(agent, idle=False, trial=False):
    """The agent's journey becomes a Parked, its modules leave the heap. idle: the board has
    no job (IDLE): nothing runs, and the journey comes back as soon as a job or cancel
    arrives (Agent.unpark). trial: the trial checks run (they read the job's checks, the
    alarm baseline and the new slot: Parked.policy() and .data)."""
    journey = agent.journey
    parked = Parked(journey, *agent.transfer_bounds())
    parked.idle = idle
    if trial:
        parked.required_checks = list(journey.policy().required_checks)
        parked.data = {"baseline": journey.data.get("baseline"),
                       "new_slot": journey.data.get("new_slot")}  # fmt: skip
    del journey  # no name may hold it while the collection below runs
    agent.journey = parked
    phase.drop(MODULES)
    gc.collect()
    if phase.LOG is not None:
        phase.LOG("parked: heap used %d free %d" % phase.heap())
