"""Fixtures for the QEMU rig: boards made per test in tmp_path and always stopped after it."""

import pytest

from hil.qemu import QemuUBoot


@pytest.fixture
def make_board(tmp_path):
    boards = []

    def make(**kwargs):
        board = QemuUBoot(str(tmp_path / ("board%d" % len(boards))), **kwargs)
        boards.append(board)
        return board

    yield make
    for board in boards:
        board.stop()
