"""The emulated board's application (runs under the MicroPython unix port): the charging
firmware's part that matters to updates, and the agent.

The emulated bootloader hands over the image descriptor it validated (MPYBOARD_APP); its
`defects` make the broken builds the scenario catalogue must catch: crash-on-boot (panics
before the agent starts), no-backend (the network never reaches the broker), refuse-session
(the charging stack refuses to start a session), alarm-storm (a ground-fault alarm every
second). A reset is the end of this process: the board controller runs the bootloader again.

Power-cut tests: with MPYBOARD_DIR/cut_at holding N (or N,M,...), the N-th journal save of the
board's life prints "POWER CUT" and blocks; the controller then pulls the plug.

Split-heap tests: with MPYBOARD_DIR/split_at holding journal states (downloading,downloaded,
..., trial), the journey's read-back after the parked step (or the trial's checks) of each
meets a MemoryError once, as in a heap the step split at 96K-100K (a test's 116K heap never
is), so the agent's reset for a split heap (agent/mpy/heapreset.py) runs on the real port at
a heap that completes; an entry boot:STATE fails a VM's first read-back in that journal
state once (every entry is taken once: repeat it for more). System.soft_reset() is
machine.soft_reset(): the app ends with SOFT_RESET_EXIT and the controller (board.py)
starts it again without a boot.
"""

import json
import os
import sys
import time

BOARD = os.getenv("MPYBOARD_DIR") or "."
APP = json.loads(os.getenv("MPYBOARD_APP") or "{}")
DEFECTS = APP.get("defects", [])


class SimStack:
    """The charging firmware's callback object the agent's checks use."""

    def __init__(self, defects):
        self.defects = defects
        self.booted = time.time()
        self.active = False
        self.energy = 0

    def session_active(self):
        return self.active

    def alarms(self):
        if "alarm-storm" not in self.defects:
            return []
        now = time.time()
        count = min(20, int(now - self.booted))
        return [{"code": "GroundFailure", "ts": now - i} for i in range(count)]

    def request(self, cmd, **fields):
        if cmd == "authorize":
            return {"ok": True}
        if cmd == "start":
            if "refuse-session" in self.defects:
                return {"ok": False, "reason": "connector lock failed"}
            self.active, self.energy = True, 0
            return {"ok": True}
        if cmd == "meter":
            self.energy += 125
            return {"ok": self.active, "energy_wh": self.energy}
        if cmd == "stop":
            self.active = False
            return {"ok": True, "energy_wh": self.energy}
        return {"ok": False, "reason": "unknown command"}


SOFT_RESET_EXIT = 5  # hil/mpyboard/board.py restarts the app alone on this exit status


class System:
    def reboot(self):
        print("[fw] machine.reset()")
        sys.exit(0)  # the controller treats the end of the process as a reset

    def soft_reset(self):
        """machine.soft_reset(): on the chip a SystemExit that restarts the VM in the same
        boot (the bootloader does not run, otadata is untouched); here the process ends with
        SOFT_RESET_EXIT and the controller starts the same app again."""
        print("[fw] machine.soft_reset()")
        sys.exit(SOFT_RESET_EXIT)

    def local_offset_s(self):
        return 0

    def boot_facts(self):
        """What a real board's main.py returns: esp32_boot_facts(machine). Here the board
        controller plays the chip's reset register (MPYBOARD_RESET: machine.reset_cause()'s
        code, hil/mpyboard/board.py)."""
        from agent.mpy.agent import esp32_boot_facts

        return esp32_boot_facts(Machine)


class Machine:
    """The part of MicroPython's esp32 `machine` the agent reads (values from its stubs)."""

    PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5

    @staticmethod
    def reset_cause():
        return int(os.getenv("MPYBOARD_RESET") or 0)


def _counted_save(n, state):
    """after_save hook: the board-wide save counter and the planned power cut."""
    path = BOARD + "/saves"
    try:
        with open(path) as f:
            count = int(f.read()) + 1
    except (OSError, ValueError):
        count = 1
    with open(path, "w") as f:
        f.write(str(count))
    try:
        with open(BOARD + "/cut_at") as f:
            cuts = [int(n) for n in f.read().split(",")]
    except (OSError, ValueError):
        return
    if count in cuts:
        print("POWER CUT at save %d (%s)" % (count, state))
        while True:
            time.sleep(1)


def _split_heap(agent):
    """See the module's docstring: split_at's states, each taken once."""
    path = BOARD + "/split_at"
    load = agent.journal.load

    def split_load(policy):
        try:
            with open(path) as f:
                states = f.read().split(",")
        except OSError:
            return load(policy)
        journey = agent.journey
        after_step = getattr(journey, "inbox", None) is not None and not journey.idle
        if after_step:
            state = journey.state
        elif journey is None:  # the boot's read-back: "boot:STATE", the journal's state
            try:
                with open(agent.journal.path) as f:
                    state = "boot:" + json.load(f).get("state", "")
            except OSError:  # no journal yet: a board that never took a job
                state = None
        else:
            state = None
        if state in states:
            states.remove(state)
            with open(path, "w") as f:
                f.write(",".join(states))
            raise MemoryError("memory allocation failed, allocating 592 bytes (split_at)")
        return load(policy)

    agent.journal.load = split_load


def main():
    import gc

    print("[fw] charger firmware %s (defects: %s)" % (APP.get("version"), DEFECTS or "none"))
    if "crash-on-boot" in DEFECTS:
        print("[fw] panic: cannot mount data partition")
        sys.exit(3)
    from agent.mpy.agent import Agent, load_config
    from agent.mpy.channel import Channel
    from agent.mpy.ota import OtaBoot
    from agent.mpy.trust import Trust

    os.chdir(BOARD)
    cfg = load_config("agent.json")
    cfg["firmware_version"] = APP.get("version")
    if "no-backend" in DEFECTS:
        print("[fw] uplink down")
        cfg["mqtt"]["port"] = 9  # discard: nothing listens, the broker is out of reach
    trust = Trust(cfg["trust"]["root"], cfg.get("state_dir", "data") + "/trusted-root.json")
    channel = Channel(cfg["mqtt"], cfg["device"]["id"])
    agent = Agent(cfg, OtaBoot(), channel, SimStack(DEFECTS), trust, System(), _counted_save)
    _split_heap(agent)
    gc.collect()
    print("[fw] agent up, heap used %d free %d" % (gc.mem_alloc(), gc.mem_free()))
    agent.run()


main()
