"""A test process that is killed takes its virtual boards with it (hil/lifeline.py): nothing
it started goes on booting, holding serial lines or logging in under a charger id."""

import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Started in a process of its own, which the test then kills with SIGKILL: it prints the pids
# of its broker and of the board's processes once the board's agent is online, then waits for
# ever. The broker goes too (its guard); QEMU, started from a thread that ends, as well.
RIGS = {
    "linux": """
        from hil.virtual.rig import VirtualRig
        rig = VirtualRig(WORKDIR).start()
        rig.power_on()
        rig.wait_online(60)
        with open(os.path.join(rig.board.dir, "run", "firmware.pgid")) as f:
            print(rig.broker.proc.pid, rig.board.proc.pid, int(f.read()), flush=True)
    """,
    "micropython": """
        from hil.mpyboard.rig import MpyRig
        rig = MpyRig(WORKDIR, heap="160K").start()
        rig.power_on()
        rig.wait_online(60)
        print(rig.broker.proc.pid, rig.board.proc.pid, flush=True)
    """,
    "qemu": """
        from hil.qemu import QemuUBoot
        board = QemuUBoot(WORKDIR)
        started = threading.Thread(target=board.start)  # a thread that ends at once
        started.start()
        started.join()
        print(board.proc.pid, flush=True)
    """,
}

# A process that starts a child the way the boards do, for the mechanism on its own.
PLAIN = """
    from hil import lifeline
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=lifeline.parent_env())
    print(child.pid, flush=True)
"""
CHILDREN = {
    "die_with_parent": "from hil import lifeline; lifeline.die_with_parent()",
    "on_parent_death": "from hil import lifeline; import os, signal; "
    "lifeline.on_parent_death(lambda: os.kill(os.getpid(), signal.SIGKILL))",
}


def gone(pid, timeout):
    """True once process `pid` (not our child) has ended, within `timeout` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def run_parent(body, tmp_path, **names):
    prelude = "import os, subprocess, sys, threading\n" + "".join(
        "%s = %r\n" % kv for kv in sorted(names.items())
    )
    script = prelude + textwrap.dedent(body) + "threading.Event().wait()\n"
    env = dict(os.environ, PYTHONPATH=REPO)
    log = open(tmp_path / "parent.err", "wb")
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=log)  # fmt: skip
    log.close()
    line = parent.stdout.readline()  # the parent prints once its board is up
    if not line:
        parent.wait(30)
        pytest.fail("the parent died first: %s" % (tmp_path / "parent.err").read_text()[-2000:])
    return parent, [int(p) for p in line.split()]


def kill(parent):
    parent.send_signal(signal.SIGKILL)
    parent.wait(30)
    parent.stdout.close()


@pytest.mark.parametrize("how", sorted(CHILDREN))
def test_a_child_ends_with_its_killed_parent(tmp_path, how):
    parent, (child,) = run_parent(PLAIN, tmp_path, CHILD="import threading\n%s\n"
                                  "print('armed', flush=True)\nthreading.Event().wait()"
                                  % CHILDREN[how])  # fmt: skip
    try:
        assert not gone(child, 0.5), "the child ended while its parent was alive"
    finally:
        kill(parent)
    assert gone(child, 20), "the child outlived its killed parent"


def test_a_child_of_no_rig_is_left_alone(tmp_path):
    # No parent in the environment (a board started by hand): the functions do nothing.
    env = {k: v for k, v in os.environ.items() if k != "HIL_PARENT_PID"}
    sys.path.insert(0, REPO)
    from hil import lifeline

    assert lifeline.die_with_parent(env) is False
    assert lifeline.on_parent_death(lambda: pytest.fail("called"), env) is False


@pytest.mark.parametrize("board", sorted(RIGS))
def test_a_board_goes_dark_when_its_test_process_is_killed(tmp_path, board):
    # Without the lifeline the Linux board's boot ROM, the broker and QEMU went on (each
    # failed here); the MicroPython app would also end at its next console line, on the
    # broken pipe, so that case shows the outcome, and test_a_child_ends_with_its_killed_parent
    # the kernel's part on its own.
    parent, pids = run_parent(RIGS[board], tmp_path, WORKDIR=str(tmp_path / "rig"))
    kill(parent)
    for pid in pids:
        assert gone(pid, 20), "process %d of the %s board outlived its test process" % (
            pid, board)  # fmt: skip
