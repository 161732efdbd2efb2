"""The benchmark runs end to end (tiny size): table and verdict are printed. Not a timing test;
the summary arithmetic (paired ratios) is checked on fixed inputs."""

import shutil

from tests import bench


def test_bench_quick_prints_table(capsys, tmp_path):
    assert bench.main(["--quick", "--sizes", "8", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == [
        "MiB", "src", "case", "MiB/s", "(min-max)", "ratio", "(min-max)", "peakRSS", "cores",
    ]  # fmt: skip
    file_cases = [c for c in bench.CASES if c != "dd" or shutil.which("dd")]
    http_cases = [c for c in bench.CASES if c != "dd"]  # dd copies files only
    expected = [("file", c) for c in file_cases] + [("http", c) for c in http_cases]
    rows = [line.split() for line in lines[2 : 2 + len(expected)]]
    assert [(r[1], r[2]) for r in rows] == expected
    assert all(r[0] == "8" and float(r[3]) > 0 and float(r[8]) >= 0 for r in rows)
    assert all(r[7].endswith("M") for r in rows if r[2] != "dd")
    assert "verified/baseline" in out and "SHA-256 on one core" in out
    assert list(tmp_path.iterdir()) == []  # payloads and slot cleaned up


def test_ratio_pairs_each_round_with_its_own_baseline():
    # round 2's baseline is slow (a host hiccup): its pair still compares like with like
    base = [
        {"seconds": 1.0, "hwm_kib": 1024, "cpu": 0.5},
        {"seconds": 4.0, "hwm_kib": 1024, "cpu": 0.5},
    ]
    case = [
        {"seconds": 2.0, "hwm_kib": 2048, "cpu": 2.0},
        {"seconds": 8.0, "hwm_kib": 3072, "cpu": 8.0},
    ]
    row = bench.summarise(256, "file", "verified", case, base, 256 * bench.MiB)
    assert (row["ratio"], row["ratio_lo"], row["ratio_hi"]) == (0.5, 0.5, 0.5)
    assert (row["rate_lo"], row["rate_hi"], row["rate"]) == (32.0, 128.0, 80.0)
    assert row["hwm"] == 3.0 and row["cores"] == 1.0


def test_verdict_names_a_miss_and_a_busy_machine():
    rows = [
        bench.summarise(256, "file", case, [{"seconds": s, "hwm_kib": 70 << 10, "cpu": 1.0}],
                        [{"seconds": 1.0, "hwm_kib": 1, "cpu": 1.0}], 256 * bench.MiB)
        for case, s in (("baseline", 1.0), ("copy+slot", 0.5), ("verified", 2.0))
    ]  # fmt: skip
    text = bench.verdict(rows, hash_rate=1700.0, busy=True)
    assert "verified/baseline 0.500" in text and "MISSES" in text
    assert "run again on an idle machine" in text
    assert "peak RSS 70.0 MiB over 64 MiB" in text
    assert "under 2000 MiB/s" in text
