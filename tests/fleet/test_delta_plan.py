"""A rollout's dry run counts what a format-2 release's delta install downloads (fleet/delta.py),
from the release's and the base release's signed chunk indexes, served by a real HTTP server
on 127.0.0.1: checked against a charger's own plan and a real install's byte count."""

import pytest
import sqlalchemy as sa

from agent.bundle.writer import PayloadSource, create_bundle
from agent.core import messages as m
from agent.transfer import delta as agent_delta
from agent.transfer import installer
from agent.trust.store import Trust
from fleet import delta
from hil.services.httpserver import FileServer
from tests.bundle.factory import HW, MODEL
from tests.fleet.conftest import make_release, open_store, serve_release, wait_until
from tests.fleet.helpers import run_cli, sim_fleet, write_rollout, write_sites
from tests.install.conftest import FileBoard
from tests.install.test_delta import image, next_release, put, release

MODELS = [("AC22", "C"), ("AC22", "D")]


def sign_image(kit, data, version, compression="zstd-chunks", mcu_bytes=0, base=None):
    src = "%s/image-%s.img" % (kit.dir, version)
    put(src, data)
    out = "%s/charger-%s-%s-%d%s.cub" % (kit.dir, version, compression, mcu_bytes,
                                         "-front" if base else "")  # fmt: skip
    bases = []
    if base is not None:  # packed with front frames for that image (--delta-base)
        bases.append(src + ".base")
        put(bases[0], base)
    payloads = [PayloadSource("rootfs", "rootfs", src, compression, bases=bases)]
    if mcu_bytes:  # an MCU's image: no chunk index, a charger streams it whole
        put(src + ".mcu", bytes(range(256)) * (mcu_bytes // 256))
        payloads.append(
            PayloadSource(
                "safety-fw",
                None,
                src + ".mcu",
                component="safety",
                mcu={
                    "id": "safety",
                    "protocol": "stm32-rom",
                    "address": 0x08000000,
                    "version": version,
                },
            )
        )
    create_bundle(out, payloads, [kit.release_key],
                  version=version, security_version=1,
                  compatible=[{"model": "AC22", "hardware_revisions": ["C", "D"]},
                              {"model": MODEL, "hardware_revisions": [HW]}],
                  expires=2**31 - 1)  # fmt: skip
    return out


@pytest.fixture
def server():
    s = FileServer({}).start()
    yield s
    s.stop()


def served(server, path):
    name = path.rsplit("/", 1)[1]
    server.files[name] = path
    return server.url(name)


def charger_plan(tmp_path, kit, booted, url):
    """(board, config, its own `install --plan` of url) of a charger booted on the image
    `booted` with nothing useful in its other slot."""
    (tmp_path / "board").mkdir()
    board = FileBoard(tmp_path / "board", kit.root_path)
    put(board.slot_a, booted)
    cfg = board.config()
    return board, cfg, agent_delta.dry_run(url, cfg, board.boot(), Trust(kit.root_path).verify)


def test_estimate_is_what_a_charger_on_the_base_plans_and_downloads(kit, server, tmp_path):
    old = release(1)
    base_url = served(server, sign_image(kit, image(old), "1.0.0"))
    new_path = sign_image(kit, image(next_release(old)), "1.1.0")
    new_url = served(server, new_path)

    got = delta.estimate(new_url, base_url, kit.root_path)
    assert got["base_version"] == "1.0.0"
    assert got["download_bytes"] < got["bundle_bytes"] / 4

    # A charger booted on 1.0.0 with nothing useful in its other slot: its own plan, then a
    # real install, download exactly that.
    board, cfg, planned = charger_plan(tmp_path, kit, image(old), new_url)
    assert planned["download_bytes"] == got["planned_bytes"]
    assert planned["payloads"][0]["ranges"] == got["payloads"][0]["ranges"] > 1
    done = installer.install(new_url, cfg, board.boot(), Trust.from_config(cfg))
    assert done.counters["downloaded"] == got["download_bytes"]


def test_estimate_of_a_release_packed_for_the_base_is_what_a_charger_downloads(
    kit, server, tmp_path
):
    # Packed with front frames for 1.0.0: a charger on it fetches block lists and frames as
    # two plain ranges, and the estimate counts the same bytes.
    old = release(3)
    base_url = served(server, sign_image(kit, image(old), "1.0.0"))
    new_url = served(server, sign_image(kit, image(next_release(old)), "1.1.0", base=image(old)))
    got = delta.estimate(new_url, base_url, kit.root_path)
    board, cfg, planned = charger_plan(tmp_path, kit, image(old), new_url)
    assert planned["download_bytes"] == got["planned_bytes"]
    assert planned["payloads"][0]["frames"] > 0 and planned["payloads"][0]["ranges"] == 1
    done = installer.install(new_url, cfg, board.boot(), Trust.from_config(cfg))
    assert done.counters["front"] > 0 and done.counters["remote"] == 0
    assert done.counters["downloaded"] == got["download_bytes"]


def test_a_payload_without_chunk_index_counts_whole(kit, server, tmp_path):
    # A release's MCU image is not chunk-indexed: a charger streams all of it, so the
    # estimate counts all of it, besides what the rootfs's plan fetches.
    old = release(4)
    base_url = served(server, sign_image(kit, image(old), "1.0.0"))
    new_url = served(server, sign_image(kit, image(next_release(old)), "1.1.0", mcu_bytes=65536))
    got = delta.estimate(new_url, base_url, kit.root_path)
    assert [p["fetch_bytes"] for p in got["payloads"]][1] == 65536
    planned = charger_plan(tmp_path, kit, image(old), new_url)[2]
    assert planned["download_bytes"] == got["planned_bytes"]
    # what the link carries: the plan's bytes, and the first request's and multipart's own
    assert got["planned_bytes"] <= got["download_bytes"] <= got["planned_bytes"] + 8192


def test_no_estimate_says_why(kit, server):
    old = release(2)
    new_url = served(server, sign_image(kit, image(next_release(old)), "1.1.0"))
    full_base = served(server, sign_image(kit, image(old), "1.0.0", compression="none"))
    with pytest.raises(delta.NoEstimate, match="format-1"):
        delta.estimate(new_url, full_base, kit.root_path)
    with pytest.raises(delta.NoEstimate, match="404|not found|Not Found"):
        delta.estimate(new_url, server.url("gone.cub"), kit.root_path)
    from hil.services.mosquitto import free_port

    with pytest.raises(delta.NoEstimate, match="refused|reach|connect"):
        delta.estimate(new_url, "http://127.0.0.1:%d/b.cub" % free_port(), kit.root_path)
    base_url = served(server, sign_image(kit, image(old), "1.0.0"))
    with pytest.raises(delta.NotWanted, match="no target runs 1.0.0"):
        delta.estimate(new_url, base_url, kit.root_path, wanted={"0.9.0"})
    server.faults.ignore_range = True
    with pytest.raises(delta.NoEstimate, match="whole file"):
        delta.estimate(new_url, base_url, kit.root_path)
    server.faults.ignore_range = False
    stranger = kit.dir + "/stranger.cub"
    from hil.release import ReleaseKit

    other = ReleaseKit(kit.dir + "/other", "AC22", "C")
    put(stranger, open(sign_image(other, image(old), "1.0.0"), "rb").read())
    with pytest.raises(delta.NoEstimate, match="signature|threshold|key"):
        delta.estimate(new_url, served(server, stranger), kit.root_path)


def test_bases_come_from_the_file_then_earlier_rollouts():
    spec = {"release": "http://h/new.cub", "bases": ["http://h/b1.cub"]}
    rollouts = [
        {"release": {"url": "http://h/old.cub", "version": "0.9.0"}},
        {"release": {"url": "http://h/b1.cub", "version": "1.0.0"}},
        {"release": {"url": "http://h/new.cub", "version": "1.1.0"}},
    ]
    assert delta.release_bases(spec, rollouts) == [
        ("http://h/b1.cub", None), ("http://h/old.cub", "0.9.0"),
    ]  # fmt: skip


def test_plan_prints_delta_bytes_per_version_and_sums_them(
    tmp_path, broker, kit, images, controller
):
    old = release(3)
    base_url = serve_release(images, sign_image(kit, image(old), "1.0.0"))
    new_url = serve_release(images, sign_image(kit, image(next_release(old)), "1.1.0"))
    got = delta.estimate(new_url, base_url, kit.root_path)
    full = got["bundle_bytes"]
    sites = [("site-%02d" % i, "workplace") for i in range(4)]
    sites_file = write_sites(str(tmp_path / "sites.toml"), [(s, t, "UTC") for s, t in sites])
    spec = write_rollout(str(tmp_path / "r.toml"), "delta-110", new_url, kit.root_path,
                         sites_file, bases=[base_url])  # fmt: skip
    store = open_store(str(tmp_path / "fleet.db"))
    with sim_fleet(broker, 12, MODELS, sites) as sim:
        older = sorted(sim.chargers)[:4]
        for device in older:  # these still run 0.9.0, whose bundle nobody named
            c = sim.chargers[device]
            c.version = "0.9.0"
            sim._publish(c, m.INVENTORY, c.inventory(sim.clock()), retain=True)
        controller(store, broker.settings())
        expected = ["0.9.0"] * 4 + ["1.0.0"] * 8
        wait_until(lambda: sorted(r["version"] for r in store.inventory()) == expected, 20,
                   "inventory")  # fmt: skip
        code, out = run_cli("--db", str(tmp_path / "fleet.db"), "rollout", "plan", spec)
        rows = store.inventory()
    assert code == 0, out
    d = got["download_bytes"]
    each = dict((r["device_id"], d if r["version"] == "1.0.0" else full) for r in rows)
    cellular = {"site-01", "site-03"}  # write_sites: every other site
    cost = sum(each[r["device_id"]] for r in rows if r["site"] in cellular) / 1e6 * 0.1
    assert "download per charger on 1.0.0: %s of %s bytes (%.1f%%, by delta; at most)" % (
        format(d, ","), format(full, ","), 100.0 * d / full) in out  # fmt: skip
    assert ("download per charger on 0.9.0: %s of %s bytes (whole bundle: no format-2 bundle of "
            "0.9.0 among the bases)" % (format(full, ","), format(full, ","))) in out  # fmt: skip
    total = [line for line in out.splitlines() if line.startswith("total")][0]
    assert "%.1f MB" % ((8 * d + 4 * full) / 1e6) in total
    assert "cellular cost %.2f" % cost in total


def test_a_format1_release_counts_whole_bundles_without_a_word_on_deltas(
    tmp_path, broker, kit, images, controller
):
    url = serve_release(images, make_release(kit, "1.1.0"))
    spec = write_rollout(str(tmp_path / "r.toml"), "full-110", url, kit.root_path)
    store = open_store(str(tmp_path / "fleet.db"))
    with sim_fleet(broker, 8, MODELS, [("site-%02d" % i, "workplace") for i in range(4)]):
        controller(store, broker.settings())
        wait_until(lambda: len(store.inventory()) == 8, 20, "inventory")
        code, out = run_cli("--db", str(tmp_path / "fleet.db"), "rollout", "plan", spec)
    assert code == 0, out
    assert "download per charger" not in out


def test_bases_in_the_rollout_file_are_checked_and_made_absolute(tmp_path):
    from fleet.errors import SpecError
    from fleet.spec import load_rollout

    path = str(tmp_path / "r.toml")
    write_rollout(path, "r", "file:new.cub", "root.json", bases=["file:old.cub", "https://h/a.cub"])
    assert load_rollout(path)["bases"] == ["file:" + str(tmp_path / "old.cub"), "https://h/a.cub"]
    for bad, says in (("x.cub", "must be a list"), (["ftp://h/a.cub"], "http"), ([""], "list")):
        write_rollout(path, "r", "file:new.cub", "root.json", bases=bad)
        with pytest.raises(SpecError, match=says):
            load_rollout(path)


def test_status_sums_what_delta_installs_downloaded_and_a_rebuild_keeps_it(
    tmp_path, broker, kit, images, controller
):
    from fleet import simulator
    from fleet.cli import status_text
    from fleet.projection import rebuild

    url = serve_release(images, make_release(kit, "1.1.0"))
    sites = [("site-%02d" % i, "workplace") for i in range(4)]
    spec = write_rollout(str(tmp_path / "r.toml"), "delta-run", url, kit.root_path)
    db = str(tmp_path / "fleet.db")
    store = open_store(db)
    with sim_fleet(broker, 8, MODELS, sites, profile_of=lambda i, *_: "delta" if i % 2 else "good"):
        controller(store, broker.settings())
        wait_until(lambda: len(store.inventory()) == 8, 20, "inventory")
        assert run_cli("--db", db, "rollout", "start", spec)[0] == 0
        wait_until(lambda: store.rollout("delta-run")["state"] == "done", 60, "done",
                   explain=lambda: status_text(store, "delta-run"))  # fmt: skip
    each = int(simulator.PAYLOAD_BYTES * simulator.DELTA_SHARE)
    rows = dict((t["device_id"], t["downloaded"]) for t in store.targets("delta-run"))
    assert sorted(rows.values(), key=str) == [each] * 4 + [None] * 4
    whole = 4 * store.rollout("delta-run")["release"]["bytes"]
    assert ("by delta: 4 chargers downloaded %s bytes, %.1f%% of their whole bundles (%s)"
            % (format(4 * each, ","), 100.0 * 4 * each / whole, format(whole, ","))
            in status_text(store, "delta-run"))  # fmt: skip
    with store.engine.begin() as conn:
        rebuild(conn)
    assert dict((t["device_id"], t["downloaded"]) for t in store.targets("delta-run")) == rows


def test_a_status_with_a_number_beyond_bigint_is_dropped_not_its_batch(db_url):
    # One charger's `downloaded` of 2**63 failed the whole ingest transaction (OverflowError
    # from SQLite, "bigint out of range" from PostgreSQL): it ended `serve`, and the unacked
    # message came back after every restart.
    store = open_store(db_url)
    good = m.status_message(m.INSTALLING, {"job_id": "r:cp-1", "downloaded": 10}, 1, 5)
    bad = dict(good, downloaded=1 << 63)
    assert store.ingest([(m.STATUS, "cp-2", bad), (m.STATUS, "cp-1", good)], 1.0) == 1
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT device_id, downloaded FROM statuses")).all()
    assert [tuple(r) for r in rows] == [("cp-1", 10)]


def test_file_urls_of_the_rollout_file_are_estimated_from(kit, tmp_path):
    # spec.py makes `file:new.cub` file:/abs/new.cub (as read_release reads it): open_ranges
    # took that for a path named "file:/abs/...", so every version counted the whole bundle.
    old = release(4)
    base = sign_image(kit, image(old), "1.0.0")
    new = sign_image(kit, image(next_release(old)), "1.1.0")
    got = delta.estimate("file:" + new, "file:" + base, kit.root_path)
    assert got["base_version"] == "1.0.0"
    assert got == delta.estimate("file://" + new, "file://" + base, kit.root_path)
    assert got["download_bytes"] < got["bundle_bytes"] / 4


def test_an_image_ending_inside_a_block_is_not_counted_below_a_charger(kit, server, tmp_path):
    # A charger's scan reads whole blocks: the base's short last block (and its group) is not
    # in its slot. The estimate took both from the base's index, and said less than the
    # charger then downloaded ("at most").
    tail = bytes(range(256)) * 4  # 1 KiB: both images end inside a block
    old = release(5)[:-16]
    base_url = served(server, sign_image(kit, image(old) + tail, "1.0.0"))
    new_url = served(server, sign_image(kit, image(next_release(old)) + tail, "1.1.0"))
    got = delta.estimate(new_url, base_url, kit.root_path)
    (tmp_path / "board").mkdir()
    board = FileBoard(tmp_path / "board", kit.root_path)
    put(board.slot_a, image(old) + tail)
    cfg = board.config()
    planned = agent_delta.dry_run(new_url, cfg, board.boot(), Trust(kit.root_path).verify)
    assert planned["download_bytes"] == got["planned_bytes"]
    done = installer.install(new_url, cfg, board.boot(), Trust.from_config(cfg))
    assert done.counters["downloaded"] == got["download_bytes"]


def test_a_slot_larger_than_the_base_image_is_not_counted_below_a_charger(kit, server, tmp_path):
    # The base's last group ends with its image; in a partition larger than the image the
    # blocks after it continue that group, so a charger fetches its detail: the estimate,
    # which took the group from the base's index, planned less than the charger ("at most").
    old = release(6)[:-16]  # data to its end: its last group is not cut by the rule
    new = next_release(old)[:-40] + old[-40:]  # the same last group as the base
    base_url = served(server, sign_image(kit, image(old), "1.0.0"))
    new_url = served(server, sign_image(kit, image(new), "1.1.0"))
    got = delta.estimate(new_url, base_url, kit.root_path)
    (tmp_path / "board").mkdir()
    board = FileBoard(tmp_path / "board", kit.root_path)
    put(board.slot_a, image(old) + bytes(range(256)) * 1024)  # 256 KiB after the image
    cfg = board.config()
    planned = agent_delta.dry_run(new_url, cfg, board.boot(), Trust(kit.root_path).verify)
    assert planned["download_bytes"] <= got["planned_bytes"]
