"""A power cut at every step of an MCU write ends in a charger whose MCU runs one release.

Each case cuts the supply (the MCU's and, with it, the agent's) at one step of the trial's
write, of the commit, or of a rollback's write; then the board comes back and either resumes
the trial (the new slot had boot attempts left) or rolls back (it had none, or the trial
failed), and the MCU, what it answers and the agent's record must all name the same release.
Real drivers, real emulators, the agent's own MCU steps (agent/control/components.py) with
their decisions and records. A cut inside the MCU (an erase, a block, an upload chunk) stops
the emulated chip from its own thread, the agent then fails on the silent line; a cut
between two steps of the agent stops the agent there (PowerCut, which nothing catches).
"""

import sys

import pytest
from smpclient.transport.serial import SMPSerialTransport

from agent.components import mcuboot as smp_driver
from agent.components import stm32 as stm32_driver
from agent.control import components as mcu_steps
from agent.core.errors import UpdateError
from agent.state.components import ComponentStore
from hil.emulators import mcu_image, mcuboot_image
from hil.emulators.mcuboot_dev import McubootDevice
from hil.emulators.stm32_rom import Stm32Rom
from tests.components.boards import SerialStack, provision

SIZE = 1024  # STM32: one page erase, four blocks to write, four to read back
ST_OLD, ST_NEW = mcu_image.build("1.0.0", size=SIZE), mcu_image.build("2.0.0", size=SIZE)


def _mcuboot(version):
    return mcuboot_image.build(mcu_image.build(version, size=8000), version)


class PowerCut(BaseException):
    """The supply is gone: the agent stops where it is."""


class Cut:
    """One cut, armed at a step: ("chip", kind, n) the n-th flash event of that kind in the
    chip; ("progress", phase) the driver's last progress report of that phase; ("before" |
    "after", method) a driver method; ("record", version) the agent's running record about
    to say `version`; ("step", name) between two journey steps."""

    def __init__(self, board, where):
        self.board, self.where, self.fired, self.seen = board, where, False, 0

    def fire(self, raise_it=True):
        if not self.fired:
            self.fired = True
            self.board.mcu.power(False)
            if raise_it:
                raise PowerCut(self.where)

    def chip_event(self, event):  # in the chip's thread: the chip stops, the agent fails
        if self.where[0] == "chip" and event[0] == self.where[1]:
            self.seen += 1
            if self.seen == self.where[2]:
                self.fire(raise_it=False)

    def progress(self, phase, done, total):
        if self.where == ("progress", phase) and done == total:
            self.fire()

    def step(self, name):
        if self.where == ("step", name):
            self.fire()


class Board:
    """One MCU on its emulator, the agent's config and state, and the cut wiring."""

    def __init__(self, kind, tmp_path, monkeypatch):
        self.kind = kind
        if kind == "stm32":
            self.mcu = Stm32Rom(lines_dir=str(tmp_path / "lines")).start()
            self.mcu.flash[:SIZE] = ST_OLD
            self.mcu.reset()
            self.old, self.new = ST_OLD, ST_NEW
            lines = self.mcu.lines_dir
            extra = ('boot0 = "gpio:%s/boot0"\nnreset = "gpio:%s/nrst"\ntimeout_s = 0.5\n'
                     "retries = 1\nstart_timeout_s = 3\n" % (lines, lines))  # fmt: skip
            self.stack = SerialStack(self.mcu.port)
            name, protocol = "safety", "stm32-rom"
        else:
            self.old, self.new = _mcuboot("1.0.0"), _mcuboot("2.0.0")
            self.mcu = McubootDevice(primary=self.old).start()
            extra = "timeout_s = 1.0\nretries = 1\nstart_timeout_s = 3\n"
            self.stack = None
            name, protocol = "meter", "mcuboot-smp"
        self.name = name
        self.cfg, self.store = provision(
            tmp_path, name, protocol, self.mcu.port,
            {"A": ("1.0.0", self.old), "B": ("2.0.0", self.new)}, "1.0.0", extra,
        )  # fmt: skip
        self.cut = None
        self.monkeypatch = monkeypatch

    def arm(self, where):
        self.cut = cut = Cut(self, where)
        self.mcu.hook = cut.chip_event
        # The agent dies with the supply: after a cut inside the chip, its next byte for the
        # MCU never leaves (rather than timing out and retrying against a dead line).
        lines = [(stm32_driver.Stm32Rom, "_write"), (SMPSerialTransport, "send")]
        if self.stack is not None:
            lines.append((self.stack, "request"))  # the charging stack asking the MCU
        for cls, name in lines:
            original = getattr(cls, name)

            def guarded(*args, original=original, **kw):
                if cut.fired:
                    raise PowerCut(where)
                return original(*args, **kw)

            self.monkeypatch.setattr(cls, name, guarded)
        if where[0] in ("before", "after"):
            original = getattr(smp_driver.Mcuboot, where[1])

            def wrapped(*args, **kw):
                if where[0] == "before":
                    cut.fire()
                result = original(*args, **kw)
                if where[0] == "after":
                    cut.fire()
                return result

            self.monkeypatch.setattr(smp_driver.Mcuboot, where[1], wrapped)
        if where[0] == "record":
            original = ComponentStore.set_running

            def record(store, name, version, confirmed):
                if version == where[1]:
                    cut.fire()
                return original(store, name, version, confirmed)

            self.monkeypatch.setattr(ComponentStore, "set_running", record)

    def power_on(self):
        self.monkeypatch.undo()
        self.mcu.hook = None
        self.mcu.power(True)

    # -- the journey's MCU steps ------------------------------------------------------------

    def trial(self):
        progress = self.cut.progress if self.cut else None
        mcu_steps.flash(self.cfg, "B", self.stack, progress)
        mcu_steps.verify_running(self.cfg, "B", self.stack)
        if self.cut:
            self.cut.step("checks passed")
        mcu_steps.confirm(self.cfg, "B", self.stack)
        if self.cut:
            self.cut.step("confirmed")  # the next step is mark_good

    def roll_back(self):
        progress = self.cut.progress if self.cut else None
        mcu_steps.restore(self.cfg, "A", self.stack, progress)

    # -- what the MCU really holds ----------------------------------------------------------

    def holds(self):
        """(version, confirmed) of what the MCU boots, from the emulator's own state."""
        if self.kind == "stm32":
            info = mcu_image.parse(self.mcu.flash)
            return (info["version"] if info else None), True
        info = self.mcu.primary.info()
        return (info[0] if info else None), self.mcu.image_ok

    def answers(self):
        if self.kind == "stm32":
            return self.stack.request("component")["version"]
        return mcu_steps.adapter(self.name, self.cfg).running()[0]

    def close(self):
        self.mcu.close()


NEW, OLD, TORN = ("2.0.0", True), ("1.0.0", True), (None, True)
# (where the cut lands, what the MCU holds when the power returns)
STM32_TRIAL = [(("chip", "erase", 1), TORN)]
STM32_TRIAL += [(("chip", "write", n), TORN) for n in (1, 2, 3)]
STM32_TRIAL += [(("chip", "write", 4), NEW)]  # all written, nothing read back yet
STM32_TRIAL += [(("chip", "read", n), NEW) for n in (1, 2, 3, 4)]
STM32_TRIAL += [(("progress", "verify"), NEW),  # read back, not started yet
                (("record", "2.0.0"), NEW),  # started and answering, not recorded yet
                (("step", "checks passed"), NEW), (("step", "confirmed"), NEW)]  # fmt: skip
STM32_ROLLBACK = [(("chip", "erase", 1), TORN)]
STM32_ROLLBACK += [(("chip", "write", 1), TORN), (("chip", "write", 4), OLD)]
STM32_ROLLBACK += [(("chip", "read", 1), OLD), (("chip", "read", 4), OLD)]
STM32_ROLLBACK += [(("progress", "verify"), OLD), (("record", "1.0.0"), OLD)]
MCUBOOT_TRIAL = [
    (("chip", "upload", 1), OLD),  # the first chunk is in the secondary slot
    (("chip", "upload", 3), OLD),
    (("before", "test"), OLD),  # uploaded, not marked for test
    (("before", "reset"), ("2.0.0", False)),  # marked for test: the cut resets, MCUboot swaps
    (("after", "wait_running"), OLD),  # ran the new image unconfirmed: MCUboot reverts it
    (("record", "2.0.0"), OLD),
    (("step", "checks passed"), OLD),
    (("before", "confirm"), OLD),
    (("step", "confirmed"), NEW),  # confirmed: MCUboot keeps it
]
MCUBOOT_ROLLBACK = [  # the new image was confirmed at a commit: the old one is written again
    (("chip", "upload", 2), NEW),
    (("before", "test"), NEW),
    (("before", "reset"), ("1.0.0", False)),  # the old image swapped in on test
    (("after", "wait_running"), NEW),  # reverted to the confirmed new image
    (("before", "confirm"), NEW),
    (("record", "1.0.0"), OLD),
]


def cases(kind, points):
    return [pytest.param(kind, where, holds, id="%s-%s" % (kind, "-".join(map(str, where))))
            for where, holds in points]  # fmt: skip


@pytest.fixture
def board_of(tmp_path, monkeypatch):
    made = []

    def make(kind):
        if kind == "mcuboot" and sys.version_info < (3, 10):
            pytest.skip("smpclient needs Python 3.10+")
        made.append(Board(kind, tmp_path, monkeypatch))
        return made[-1]

    yield make
    for b in made:
        b.close()


def cut_then(board, run, where, holds_after_cut):
    board.arm(where)
    with pytest.raises((PowerCut, UpdateError)):
        run()
    assert board.cut.fired, "the cut at %s never came" % (where,)
    board.cut = None
    since = len(board.mcu.events)
    board.power_on()
    up = ("boot",) if board.kind == "stm32" else ("booted",)  # MCUboot: after its swap decision
    assert board.mcu.wait_for(lambda ev: any(e[0] in up for e in ev[since:]))
    assert board.holds() == holds_after_cut


def ends_on(board, version):
    assert board.holds() == (version, True)
    assert board.answers() == version
    assert board.store.running()[board.name] == {"version": version, "confirmed": True}


@pytest.mark.parametrize("then", ["resume-trial", "roll-back"])
@pytest.mark.parametrize(
    "kind, where, holds", cases("stm32", STM32_TRIAL) + cases("mcuboot", MCUBOOT_TRIAL)
)
def test_power_cut_in_the_trial_write_ends_on_one_release(board_of, kind, where, holds, then):
    board = board_of(kind)
    cut_then(board, board.trial, where, holds)
    if then == "resume-trial":  # the new slot boots again: the trial starts over
        board.trial()
        ends_on(board, "2.0.0")
    else:  # back on the old slot
        board.roll_back()
        ends_on(board, "1.0.0")


@pytest.mark.parametrize(
    "kind, where, holds", cases("stm32", STM32_ROLLBACK) + cases("mcuboot", MCUBOOT_ROLLBACK)
)
def test_power_cut_in_a_rollback_write_ends_on_the_old_release(board_of, kind, where, holds):
    board = board_of(kind)
    board.trial()  # committed: the MCU runs 2.0.0, confirmed
    ends_on(board, "2.0.0")
    cut_then(board, board.roll_back, where, holds)
    board.roll_back()  # the old slot boots again and the rollback goes on
    ends_on(board, "1.0.0")


@pytest.mark.parametrize("where", [("before", "reset"), ("after", "reset"), ("record", "1.0.0")])
def test_power_cut_in_a_rollback_by_mcuboots_revert_ends_on_the_old_release(board_of, where):
    board = board_of("mcuboot")
    mcu_steps.flash(board.cfg, "B", None)  # the trial wrote it; a check then failed
    assert board.holds() == ("2.0.0", False)
    cut_then(board, board.roll_back, where, OLD)  # any reset reverts the unconfirmed image
    board.roll_back()
    ends_on(board, "1.0.0")
    assert not [e for e in board.mcu.events if e[0] == "upload-start"][1:]  # never uploaded
