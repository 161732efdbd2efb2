"""The fleet benchmark runs end to end on a small fleet (both databases, a real broker), so
`make bench` cannot break silently when the spec or the messages change. Not a timing test."""

from tests import bench_fleet


def test_fleet_bench_runs_on_a_small_fleet(capsys, pg_server, monkeypatch):
    monkeypatch.setenv("CHARGER_FLEET_PG", pg_server)
    rows = bench_fleet.run(300, 1)
    assert [r["db"] for r in rows] == ["sqlite", "postgresql"]
    for r in rows:
        assert r["n"] == 300 and r["cells"] > 0
        assert r["halted"] == []  # 2% rolled back (check-failed): under the bench's 50% rate
    out = capsys.readouterr().out
    assert out.count("statuses via mosquitto") == 2 and "matrix (" in out
