"""The fleet benchmark runs end to end on a small fleet (both databases, a real broker), so
`make bench` cannot break silently when the spec or the messages change. Not a timing test."""

from tests import bench_fleet


def test_fleet_bench_runs_on_a_small_fleet(capsys, pg_server, monkeypatch):
    monkeypatch.setenv("CHARGER_FLEET_PG", pg_server)
    rows = bench_fleet.run(300, 1)
    assert [r["db"] for r in rows] == ["sqlite", "postgresql"]
    for r in rows:
        assert r["n"] == 300 and r["cells"] > 0
        # Every 50th charger rolled back (check-failed): all of them run 1.0.0, one per model.
        assert r["halted"] == ["AC22/C/1.0.0", "AC22/D/1.0.0", "DC50/A/1.0.0"]
    out = capsys.readouterr().out
    assert out.count("statuses via mosquitto") == 2 and "matrix (" in out
