"""Format-2 bundles installed by ranges (agent/transfer/delta.py, adaptive.py): what a charger
already has is copied from its slots, the rest fetched from a real HTTP server on 127.0.0.1,
and every block is checked against the signed chunk index. Images are small and synthetic
(a few hundred blocks with the shifts and scattered changes an ext4 release has); the
debootstrap image pairs are `make bench-delta`'s."""

import os
import random

import pytest

from agent.bundle import format as fmt
from agent.core.errors import ConfigError, MalformedBundle, PayloadMismatch
from agent.transfer import delta, installer
from agent.trust.store import Trust

BLOCK = 4096


def release(seed, blocks=192):
    """An image of distinct, half compressible blocks with a zero tail (free space)."""
    rng = random.Random(seed)
    words = [b"charger", b"config", b"rootfs", b"release", b"%d" % seed]
    out = []
    for i in range(blocks):
        line = b" ".join(rng.choice(words) for _ in range(8)) + b" block %d\n" % i
        text = (line * (BLOCK // len(line) + 1))[: BLOCK // 2]
        out.append(text + bytes(rng.getrandbits(8) for _ in range(BLOCK // 2)))
    return out + [bytes(BLOCK)] * 16


def image(blocks):
    return b"".join(blocks)


def next_release(old, inserted=8, changed=(3, 40, 41, 90)):
    """Blocks inserted early (everything after shifts), a few rewritten: a minor release."""
    rng = random.Random(99)
    new = list(old[:20]) + [os.urandom(64) * (BLOCK // 64) for _ in range(inserted)]
    new += list(old[20:-inserted])
    for i in changed:
        new[i] = bytes(rng.getrandbits(8) for _ in range(64)) * (BLOCK // 64)
    return new


def put(path, data):
    with open(path, "wb") as f:
        f.write(data)


def run(board, url, **kwargs):
    cfg = board.config()
    return installer.install(url, cfg, board.boot(), Trust.from_config(cfg), **kwargs)


def test_format2_bundle_round_trips_and_verifies(signer, tmp_path):
    from agent.bundle.reader import verify_file

    path = signer(image(release(1)))
    with open(path, "rb") as f:
        assert f.read(8) == fmt.MAGIC2
    assert verify_file(path, Trust(signer.root)).format == 2


def test_reuses_blocks_from_both_slots_and_fetches_only_the_rest(board, signer, served):
    old = release(1)
    new = next_release(old)
    b = board(signer.root)
    # The inactive slot still holds the start of the old image (where the new one keeps it:
    # blocks that moved forward are overwritten before they are needed), the booted slot
    # the rest.
    put(b.slot_b, image(old[:20]))
    put(b.slot_a, image([bytes(BLOCK)] * 20 + old[20:]))
    server = served(signer(image(new)))
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    c = done.counters
    assert c["inactive"] == 19 and c["booted"] > 150  # both slots contributed
    assert c["remote"] == 8 + 4  # the inserted and the rewritten blocks, nothing else
    assert c["refetched"] == 0
    full = os.path.getsize(server.files["b.cub"])
    assert c["downloaded"] < full / 4
    assert any("," in (r["range"] or "") for r in server.requests)  # one multi-range request


def test_corrupted_local_block_is_refetched_never_trusted(board, signer, served, monkeypatch):
    from agent.transfer import adaptive

    old = release(1)
    new = next_release(old)
    b = board(signer.root)
    put(b.slot_a, image(old))
    put(b.slot_b, b"")
    server = served(signer(image(new)))
    real_plan = adaptive.make_plan

    def plan_then_flip(index, offset, booted, inactive, ranges):
        plan = real_plan(index, offset, booted, inactive, ranges)
        with open(booted, "r+b") as f:  # a bit flips in the booted slot after indexing
            f.seek(50 * BLOCK + 7)
            byte = f.read(1)
            f.seek(50 * BLOCK + 7)
            f.write(bytes([byte[0] ^ 1]))
        return plan

    monkeypatch.setattr(adaptive, "make_plan", plan_then_flip)
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert done.counters["refetched"] == 1


def test_server_without_range_support_falls_back_to_a_full_download(board, signer, served):
    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    new = next_release(release(1))
    server = served(signer(image(new)))
    server.faults.ignore_range = True
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert done.counters is None  # streamed whole, every block still checked
    assert server.requests[-1]["status"] == 200


@pytest.mark.parametrize("mode", ["first", "whole"])
def test_server_without_multirange_gets_one_range_per_request(board, signer, served, mode):
    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    new = next_release(release(1))
    server = served(signer(image(new)))
    server.faults.multirange = mode
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert done.counters["remote"] == 12


def test_lying_server_is_caught_by_the_chunk_check(board, signer, served):
    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    put(b.slot_b, b"previous content")
    path = signer(image(next_release(release(1))))
    server = served(path)
    head = delta.dry_run(path, b.config(), b.boot(), lambda env: Trust(signer.root).verify(env))
    payload_start = head["head_bytes"]
    server.faults.lie_after = payload_start  # every range of payload bytes has a flipped byte
    with pytest.raises(PayloadMismatch, match="chunk"):
        run(b, server.url("b.cub"))
    boot = b.boot().status()
    assert boot["primary"] == "A"  # nothing switched; the slot is marked not bootable


def test_power_cut_mid_install_resumes_without_fetching_written_blocks(board, signer, served):
    old = release(1)
    new = next_release(old)
    b = board(signer.root)
    put(b.slot_a, image(old))
    # The power went out after the first 120 blocks of the new image reached slot B.
    put(b.slot_b, image(new[:120]) + os.urandom(BLOCK) * 3)
    server = served(signer(image(new)))
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    first = next_release(old)[:120]
    fresh = [blk for blk in first if blk not in old]  # fetched the first time
    assert done.counters["inactive"] >= len(fresh)
    assert done.counters["remote"] == 12 - len(fresh)


def test_index_not_matching_the_manifest_is_refused(board, signer, served, tmp_path):
    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    path = signer(image(next_release(release(1))))
    data = bytearray(open(path, "rb").read())
    length = fmt.parse_header(bytes(data[: fmt.HEADER_SIZE]))
    data[fmt.HEADER_SIZE + length + 5] ^= 0x01  # a byte of the stored chunk index
    forged = str(tmp_path / "forged.cub")
    put(forged, bytes(data))
    server = served(forged)
    with pytest.raises(MalformedBundle, match="does not match its signed sha256"):
        run(b, server.url("b.cub"))
    assert b.read_slot("B") == b"old firmware 0.9"  # refused before a byte was written


def test_plan_reports_bytes_a_charger_would_download(board, signer):
    old = release(1)
    b = board(signer.root)
    put(b.slot_a, image(old))
    path = signer(image(next_release(old)))
    plan = delta.dry_run(path, b.config(), b.boot(), lambda env: Trust(signer.root).verify(env))
    row = plan["payloads"][0]
    assert row["blocks"]["remote"] == 12 and row["blocks"]["zero"] == 8
    assert plan["download_bytes"] == plan["head_bytes"] + row["fetch_bytes"]
    assert plan["download_bytes"] < plan["bundle_bytes"] / 4


def test_installing_statuses_carry_bytes_downloaded_and_payload_size(board, signer, served):
    from agent.control.steps import StatusProgress

    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    server = served(signer(image(next_release(release(1)))))
    steps = []
    progress = StatusProgress(lambda percent, sizes=None: steps.append((percent, sizes)))
    cfg = b.config()
    done = installer.install(
        server.url("b.cub"), cfg, b.boot(), Trust.from_config(cfg), progress_factory=progress.start
    )
    assert steps[-1][0] == 100
    assert steps[-1][1] == {"downloaded": done.counters["downloaded"], "payload_bytes": 208 * BLOCK}


def test_cli_plan_prints_the_bytes_to_download(board, signer, capsys):
    from agent.cli import main

    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    path = signer(image(next_release(release(1))))
    assert main(["--config", b.config_path, "install", "--plan", path]) == 0
    out = capsys.readouterr().out
    assert "this charger would download" in out and "12 fetched" in out
    assert b.read_slot("B") == b"old firmware 0.9"  # nothing written


# -- the hardening of issue 11 holds on the install by ranges too ---------------------------


def test_range_install_never_writes_the_running_slot(board, signer, served):
    """Slot B's target a symlink to the running slot A (review #10): refused before the
    first request, whichever way the bundle would be fetched."""
    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    os.symlink("slotA.img", os.path.join(b.dir, "slotB-link.img"))
    with open(b.config_path) as f:
        text = f.read()
    with open(b.config_path, "w") as f:
        f.write(text.replace('rootfs = "slotB.img"', 'rootfs = "slotB-link.img"'))
    server = served(signer(image(next_release(release(1)))))
    with pytest.raises(ConfigError, match="same storage as slot A"):
        run(b, server.url("b.cub"))
    assert b.read_slot("A") == image(release(1))
    assert server.requests == []


def job_openers(stopper=None):
    """What the daemon's install step passes: the job URL rules and its stopper."""
    import functools

    from agent.transfer.fetch import open_job_source
    from agent.transfer.ranges import open_job_ranges

    return {
        "source_opener": functools.partial(open_job_source, stopper=stopper),
        "ranges_opener": functools.partial(open_job_ranges, stopper=stopper),
    }


def test_range_install_of_a_job_version_not_signed_is_refused_before_a_write(
    board, signer, served
):  # fmt: skip
    """A job saying 9.9.9 for a 2.0.0 bundle (review #16): the install by ranges checks it
    with the signatures, before the first payload range is asked for."""
    from agent.core.errors import VersionMismatch

    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    server = served(signer(image(next_release(release(1)))))
    with pytest.raises(VersionMismatch):
        run(b, server.url("b.cub"), version="9.9.9", **job_openers())
    assert b.read_slot("B") == b"old firmware 0.9"
    assert all(r["range"] for r in server.requests)  # ranges only: the streamed path never ran
    done = run(b, server.url("b.cub"), version="2.0.0", **job_openers())
    assert done.counters["remote"] == 12  # the same job with the signed version installs


def test_range_install_of_a_file_job_outside_file_dir_refused(board, signer):
    """A job's file: URL (review #12) takes the file_dir rule into the install step too."""
    from agent.control import steps
    from agent.core import lifecycle as lc

    b = board(signer.root)
    cfg = b.config()
    progress = steps.StatusProgress(lambda *a: None)
    for path in ("/etc/passwd", "/etc/no-such-file-here"):
        event, info = steps.install("file://" + path, cfg, b.boot(), Trust.from_config(cfg),
                                    None, progress)  # fmt: skip
        assert (event, info["reason"]) == (lc.INSTALL_ERROR, "bad-source")
        assert "not allowed" in info["detail"]
    assert b.read_slot("B") == b"old firmware 0.9"


def test_range_install_stopped_mid_transfer_ends_its_worker(board, signer, served):
    """Cancel and the job's deadline (review #11) stop a range install blocked on a trickling
    server: the worker returns, its socket is shut, the slot is not recorded as installed."""
    import threading

    from agent.control import steps
    from agent.core import lifecycle as lc
    from agent.core.errors import NetworkError
    from agent.transfer.fetch import Stopper

    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    path = signer(image(next_release(release(1))))
    server = served(path)
    check = lambda env: Trust(signer.root).verify(env)  # noqa: E731
    server.faults.trickle_from = delta.dry_run(path, b.config(), b.boot(), check)["head_bytes"]
    server.faults.trickle_s = 0.2
    server.faults.multirange = "first"  # one range per request: every payload answer trickles
    stopper, outcome = Stopper(), {}
    cfg = b.config()

    def worker():
        outcome["result"] = steps.install(server.url("b.cub"), cfg, b.boot(),
                                          Trust.from_config(cfg), None,
                                          steps.StatusProgress(lambda *a: None), None,
                                          stopper)  # fmt: skip

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    assert server.faults.trickling.wait(10), "the payload ranges never started"
    stopper.stop(NetworkError("cancelled by the operator"))
    thread.join(10)
    assert not thread.is_alive(), "the install worker lived on after the stop"
    event, info = outcome["result"]
    assert event == lc.INSTALL_ERROR and "cancelled" in info["detail"]
    assert server.faults.hung_up.wait(10), "the socket stayed open"
    assert b.boot().status()["primary"] == "A"


def test_groups_a_slot_holds_are_taken_without_their_block_lists(board, signer):
    old = release(1)
    rng = random.Random(5)
    inserted = [bytes(rng.getrandbits(8) for _ in range(64)) * (BLOCK // 64) for _ in range(8)]
    new = old[:20] + inserted + old[20:-8]
    for i in (3, 40, 41, 90):
        new[i] = bytes(rng.getrandbits(8) for _ in range(64)) * (BLOCK // 64)
    b = board(signer.root)
    put(b.slot_a, image(old))
    path = signer(image(new))
    plan = delta.dry_run(path, b.config(), b.boot(), lambda env: Trust(signer.root).verify(env))
    row = plan["payloads"][0]
    # Changes at blocks 3, 20-27 (inserted), 40, 41, 90: a few groups; the shifted rest is
    # recognised by group ids alone.
    assert 0 < row["groups_fetched"] <= 6 < row["groups"], row
    assert row["detail_bytes"] < row["groups_fetched"] * 4 * 16 * 10 + 100
    assert row["blocks"]["remote"] == 12


def test_block_list_from_a_lying_server_writes_no_block_it_names(
    board, signer, served, monkeypatch
):
    # A block list names short ids: it is checked with the blocks it names, by their group's
    # signed id, before any of them is written (then fetched again, and the server lies again).
    monkeypatch.setattr(delta, "HEAD_BYTES", 16)  # the block lists come by their own request
    b = board(signer.root)
    put(b.slot_a, image(release(1)))
    path = signer(image(next_release(release(1))))
    server = served(path)
    head = delta.dry_run(path, b.config(), b.boot(), lambda env: Trust(signer.root).verify(env))
    server.faults.lie_after = head["head_bytes"]  # the payload starts with the block lists
    with pytest.raises(PayloadMismatch, match="block .* does not match the signed chunk index"):
        run(b, server.url("b.cub"))
    assert b.read_slot("B") == b"old firmware 0.9"
    assert b.boot().status()["primary"] == "A"


def test_a_block_the_image_repeats_is_fetched_once(board, signer, served):
    old = release(1)
    fresh = os.urandom(BLOCK // 2) * 2
    new = old[:30] + [fresh] + old[30:100] + [fresh] + old[100:]
    b = board(signer.root)
    put(b.slot_a, image(old))
    server = served(signer(image(new)))
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert (done.counters["remote"], done.counters["repeated"]) == (1, 1)


def test_link_dropped_mid_blocks_asks_again_only_for_what_was_cut(
    board, signer, served, monkeypatch
):
    from agent.transfer import adaptive

    old = release(1)
    new = next_release(old)
    b = board(signer.root)
    put(b.slot_a, image(old))
    server = served(signer(image(new)))
    real_plan = adaptive.make_plan

    def plan_then_cut(*args):
        plan = real_plan(*args)
        server.faults.drop_after, server.faults.drop_times = 700, 1  # the blocks' answer
        cut.extend(plan.spans)
        return plan

    cut = []
    monkeypatch.setattr(adaptive, "make_plan", plan_then_cut)
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert done.counters["remote"] == 12
    first, again = server.requests[-2]["range"], server.requests[-1]["range"]
    assert first == "bytes=" + ",".join("%d-%d" % (s, s + n - 1) for s, n in cut)
    asked_again = [tuple(int(x) for x in p.split("-")) for p in again[6:].split(",")]
    assert asked_again[-1][1] == cut[-1][0] + cut[-1][1] - 1  # up to the end of the last
    assert asked_again[0][0] > cut[0][0]  # but not what arrived before the cut


def _short_id_twins():
    """Two different blocks whose ids share their first 4 bytes (what a block list names):
    a birthday search over about 2^16.5 blocks, deterministic."""
    from agent.core import chunkindex as ci

    seen = {}
    for k in range(1 << 20):
        block = (b"twin %d " % k) * (BLOCK // 8)
        block = block[:BLOCK]
        short = ci.short_id(ci.block_id(block))
        if short in seen:
            return seen[short], block
        seen[short] = block
    raise AssertionError("no collision in 2^20 blocks")


def test_local_block_with_the_same_short_id_is_never_written(board, signer, served):
    # A block list names 4-byte ids: a block of the booted slot may share one with a new
    # block of the image. The group's signed id (over 8-byte ids) catches it before any of
    # the group's blocks is written, and the group is fetched again whole.
    mine, theirs = _short_id_twins()
    old = release(1)
    old[60] = mine
    new = list(old)
    new[100] = theirs
    b = board(signer.root)
    put(b.slot_a, image(old))
    server = served(signer(image(new)))
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert done.counters["refetched"] > 0
    assert done.counters["remote"] == 0  # planned from the booted slot, by its short id
