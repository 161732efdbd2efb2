"""The QEMU rig's own promises: QEMU dies with the rig, a failed start says why."""

import os
import signal

import pytest

from hil.drivers.console import ConsoleClosed
from hil.qemu import QemuStartError, QemuUBoot, board_env, missing_prerequisites

MISSING = missing_prerequisites()
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason="QEMU U-Boot rig unavailable: %s (run make qemu-deps)" % "; ".join(MISSING),
)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_leaving_the_with_block_kills_qemu_by_pid(tmp_path):
    with QemuUBoot(str(tmp_path), env=board_env()) as board:
        board.wait_prompt()
        pid = board.proc.pid
        assert alive(pid)
    assert not alive(pid)
    board.stop()  # idempotent


def test_power_cycle_is_a_new_process_on_the_same_flash(make_board):
    board = make_board(env=board_env())
    board.start()
    board.wait_prompt()
    first = board.proc.pid
    board.run("setenv MARK before-cut; saveenv")
    board.power_cycle()
    board.wait_prompt()
    assert board.proc.pid != first and not alive(first)
    assert board.printenv("MARK") == "before-cut"


def test_power_lost_while_waiting_is_reported_not_hung(make_board):
    board = make_board(env=board_env())
    console = board.start()
    board.wait_prompt()
    os.kill(board.proc.pid, signal.SIGKILL)  # the supply dies under the rig
    with pytest.raises(ConsoleClosed):
        console.expect("never printed", timeout=30)


def test_qemu_that_cannot_start_reports_its_log(make_board):
    board = make_board(env=board_env(), memory_mb="lots")  # QEMU refuses its arguments
    with pytest.raises(QemuStartError) as err:
        board.start()
    assert board.qemu_log in str(err.value)
    with open(board.qemu_log) as log:
        assert "-m lots" in log.read()
    assert board.proc is None


def test_missing_flash_image_is_named_before_qemu_starts(make_board):
    board = make_board(env=board_env())
    os.remove(board.flash0)
    with pytest.raises(QemuStartError, match="flash0.img is missing"):
        board.start()
    assert board.proc is None
