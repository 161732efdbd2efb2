"""MCU components: every microcontroller of the release under trial answers and runs the
version the release lists (the MCU steps wrote them just before the checks ran)."""

from agent.checks import CheckFailed
from agent.core.errors import UpdateError


class Components:
    name = "components"

    def run(self, ctx):
        from agent.control import components as mcu_steps

        written = getattr(ctx, "components", None)
        if isinstance(written, dict) and written.get("problem"):
            raise CheckFailed(written["problem"], written)
        try:
            running = mcu_steps.verify_running(ctx.cfg, getattr(ctx, "slot", None), ctx.stack)
        except UpdateError as e:
            raise CheckFailed(e.message, {"written": written}) from None
        return {"running": running, "written": written}
