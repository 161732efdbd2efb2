"""The benchmark runs end to end (tiny size): table and verdict are printed. Not a timing test."""

from tests import bench


def test_bench_quick_prints_table(capsys, tmp_path):
    assert bench.main(["--quick", "--sizes", "8", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == [
        "MiB",
        "src",
        "case",
        "med",
        "MiB/s",
        "ratio",
        "best",
        "ratio",
        "peakRSS",
    ]
    rows = [line.split() for line in lines[2:10]]
    assert [(r[1], r[2]) for r in rows] == [
        (src, case) for src in ("file", "http") for case in bench.CASES
    ]
    assert all(r[0] == "8" and float(r[3]) > 0 and r[7].endswith("M") for r in rows)
    assert "verified/baseline" in out
    assert list(tmp_path.iterdir()) == []  # payloads and slot cleaned up
