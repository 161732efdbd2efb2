"""An OEM's own trial check, as docs/agent.md shows it (loaded by name in test_checks.py)."""

from agent.checks import CheckFailed


class ContactorSelfTest:
    def run(self, ctx):
        reply = ctx.stack.request("contactor_test")
        if not reply.get("closed"):
            raise CheckFailed("contactor did not close", reply)
        return reply


class Hangs:
    """A check that never answers (a deadlocked OEM self-test)."""

    def run(self, ctx):
        ctx.wait(3600)
        return {}


LOADED = []  # Recorder instances: proof that a check was loaded


class Recorder:
    """A harmless stand-in for code a job must never get loaded."""

    def __init__(self):
        LOADED.append(self)

    def run(self, ctx):
        return {}
