"""The benchmark runs end to end (tiny size, the development venv): table and verdicts are
printed. Not a timing test; the summary arithmetic (paired ratios) is checked on fixed inputs."""

import os
import shutil

import pytest

from tests import bench, bench_process


def test_bench_quick_prints_table(capsys, tmp_path):
    assert (
        bench.main(
            ["--quick", "--dev", "--sizes", "8", "--dir", str(tmp_path), "--fleet-chargers", "0"]
        )
        == 0
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == [
        "MiB", "src", "case", "MiB/s", "(min-max)", "ratio", "(min-max)", "peakRSS", "cores",
        "disk", "ms", "disk", "MiB",
    ]  # fmt: skip
    have_dd = shutil.which("dd") is not None
    expected = [(kind, case) for kind, _, case in bench.round_cases([("file", ""), ("http", "")],
                                                                   have_dd)]  # fmt: skip
    rows = [line.split() for line in lines[2 : 2 + len(expected)]]
    assert [(r[1], r[2]) for r in rows] == expected
    assert all(r[0] == "8" and float(r[3]) > 0 and float(r[8]) >= 0 for r in rows)
    assert all(r[7].endswith("M") for r in rows if r[2] not in bench.FILE_ONLY)
    assert "SHA-256 on one core" in out
    assert "charger-update install 1 MiB" in out and "--help" in out
    assert "wake-ups/s" in out and "RSS MiB" in out
    assert list(tmp_path.iterdir()) == []  # payloads and slot cleaned up


def test_ratio_pairs_each_round_with_its_own_dd():
    # round 2's dd is slow (a host hiccup): its pair still compares like with like
    base = [
        {"seconds": 1.0, "hwm_kib": 1024, "cpu": 0.5},
        {"seconds": 4.0, "hwm_kib": 1024, "cpu": 0.5},
    ]
    case = [
        {"seconds": 2.0, "hwm_kib": 2048, "cpu": 2.0},
        {"seconds": 8.0, "hwm_kib": 3072, "cpu": 8.0},
    ]
    row = bench.summarise(256, "file", "install", case, base, 256 * bench.MiB)
    assert (row["ratio"], row["ratio_lo"], row["ratio_hi"]) == (0.5, 0.5, 0.5)
    assert (row["rate_lo"], row["rate_hi"], row["rate"]) == (32.0, 128.0, 80.0)
    assert row["hwm"] == 3.0 and row["cores"] == 1.0


def test_verdict_names_a_miss_and_a_busy_machine():
    rows = [
        bench.summarise(256, "file", case, [{"seconds": s, "hwm_kib": 70 << 10, "cpu": 1.0}],
                        [{"seconds": 1.0, "hwm_kib": 1, "cpu": 1.0}], 256 * bench.MiB)
        for case, s in (("dd", 1.0), ("copy+slot", 0.5), ("install", 2.0))
    ]  # fmt: skip
    text = bench.verdict(rows, hash_rate=1700.0, busy=True)
    assert "install/dd 0.500" in text and "MISSES the 0.70 target" in text
    assert "run again on an idle machine" in text
    assert "peak RSS 70.0 MiB, over the 40 MiB target" in text


def test_measured_reports_the_commands_own_peak_rss_not_the_callers():
    ballast = bytearray(200 << 20)  # this process holds 200 MiB resident ...
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    r = bench_process.measured([shutil.which("true")])
    assert r["maxrss_kib"] < 50 << 10  # ... yet `true` is reported at its own few MiB
    assert r["seconds"] >= 0 and r["cpu"] >= 0
    del ballast


def test_a_missed_read_back_target_prints_its_ceilings():
    # dd 0.16 s; the medium writing and reading at once 0.32 s; the install 0.56 s with
    # 0.5 CPU-seconds: neither the medium (0.5x) nor the CPU lets it reach 0.7x
    dd = [{"seconds": 0.16, "hwm_kib": 1, "cpu": 0.1}]
    rw = [{"seconds": 0.32, "hwm_kib": 1, "cpu": 0.1}]
    case = [{"seconds": 0.56, "hwm_kib": 1024, "cpu": 0.5, "disk_ms": 290,
             "disk_read": 256 * bench.MiB, "disk_written": 256 * bench.MiB}]  # fmt: skip
    row = bench.summarise(256, "file", "install", case, dd, 256 * bench.MiB, rw)
    assert row["medium_bound"] == 0.5 and row["disk_ms"] == 290 and row["disk_mib"] == 512
    text = bench.verdict([row], hash_rate=1700.0, busy=False)
    assert "MISSES the 0.70 target" in text
    assert "dd-rw) allows <= 0.50" in text and "out of reach on this machine" in text
    # a case that does not read back gets no medium ceiling from dd-rw
    norb = bench.summarise(256, "file", "install-norb", case, dd, 256 * bench.MiB, rw)
    assert norb["medium_bound"] is None


def test_the_slot_devices_counters_see_a_write(tmp_path):
    device = bench.block_device(str(tmp_path))
    if device is None:
        pytest.skip("%s is on no block device (tmpfs, overlay): no disk columns" % tmp_path)
    before = bench.disk_sample(device)
    with open(tmp_path / "w.bin", "wb") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    moved = bench.disk_delta(before, bench.disk_sample(device))
    assert moved["disk_written"] >= 1 << 20, (device, moved)
    assert moved["disk_ms"] >= 0 and moved["disk_read"] >= 0
