"""Progress output with a fake clock: exact lines, no flooding."""

import io

from agent.transfer.progress import Progress
from tests.transfer.conftest import FakeClock


def test_plain_lines_every_ten_percent():
    clock, out = FakeClock(), io.StringIO()
    p = Progress(100 * 1000 * 1000, "rootfs", stream=out, clock=clock, tty=False)
    for _ in range(1000):
        clock.now += 0.01
        p.update(100 * 1000)
    p.done()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # 10%..100% and the summary
    assert lines[0] == "rootfs: 10% (10.0 of 100.0 MB, 10.0 MB/s, ETA 0:09)"
    assert lines[-1] == "rootfs: done, 100.0 MB in 10.0 s (10.0 MB/s)"


def test_tty_bar_redraws_in_place_and_rate_limited():
    clock, out = FakeClock(), io.StringIO()
    p = Progress(1000 * 1000, "rootfs", stream=out, clock=clock, tty=True)
    for _ in range(8):
        clock.now += 0.125  # exact in binary: redraws at 0.125, 0.375, 0.625, 0.875 s
        p.update(125 * 1000)
    text = out.getvalue()
    assert "\n" not in text
    assert text.count("\r") == 4
    bar = "rootfs [" + "#" * 26 + "-" * 4 + "]  87% 1.0 MB/s ETA 0:00"
    assert text.rsplit("\r", 1)[1] == bar
    p.done()
    assert out.getvalue().endswith("rootfs: done, 1.0 MB in 1.0 s (1.0 MB/s)\n")


def test_unknown_total_prints_by_time():
    clock, out = FakeClock(), io.StringIO()
    p = Progress(None, "download", stream=out, clock=clock, tty=False)
    for _ in range(25):
        clock.now += 1.0
        p.update(1000 * 1000)
    assert out.getvalue().splitlines() == [
        "download: 1.0 MB, 1.0 MB/s",
        "download: 11.0 MB, 1.0 MB/s",
        "download: 21.0 MB, 1.0 MB/s",
    ]
