"""Front frames (`bundle create --delta-base`): a format-2 bundle packed for the releases
chargers run also holds, at its end, the blocks those releases lack as one zstd frame per
group. A charger on such a release fetches its delta as two ranges (the block lists of the
groups it lacks, then the frames), with no multipart framing; any other charger, a power
cut, a lying server and a full download still work as without a front. Real HTTP server on
127.0.0.1, small synthetic images (tests/install/test_delta.py)."""

import json
import os
import random

import pytest

from agent.bundle.reader import verify_file
from agent.core import chunkindex as ci
from agent.core.errors import MalformedBundle
from agent.transfer import adaptive, delta
from agent.trust.store import Trust
from tests.bundle.factory import HW, MODEL
from tests.install.test_delta import BLOCK, image, next_release, put, release, run


def on_base(board, signer):
    """(release 1, its next release, that packed with a front for release 1, a board booted
    on release 1)."""
    old = release(1)
    new = next_release(old)
    path = signer(image(new), bases=[image(old)])
    b = board(signer.root)
    put(b.slot_a, image(old))
    return old, new, path, b


def plan_of(b, path, root):
    return delta.dry_run(path, b.config(), b.boot(), lambda env: Trust(root).verify(env))


def payload_requests(server, head_bytes):
    """The Range values of the requests for payload bytes (after the head)."""
    out = []
    for r in server.requests:
        first = int(r["range"][6:].split("-")[0]) if r["range"] else 0
        if first >= head_bytes:
            out.append(r["range"])
    return out


def test_a_charger_on_the_base_fetches_its_delta_in_two_single_ranges(
    board, signer, served, monkeypatch
):
    monkeypatch.setattr(delta, "HEAD_BYTES", 16)  # no payload byte comes with the head
    old, new, path, b = on_base(board, signer)
    head = plan_of(b, path, signer.root)
    row = head["payloads"][0]
    assert row["blocks"]["front"] == 12 and row["blocks"]["remote"] == 0, row
    # The same image packed without a front: more bytes, in more ranges.
    plain = plan_of(b, signer(image(new), name="plain.cub"), signer.root)["payloads"][0]
    assert row["fetch_bytes"] < plain["fetch_bytes"] and row["ranges"] < plain["ranges"]
    server = served(path)
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert (done.counters["front"], done.counters["remote"], done.counters["refetched"]) == (
        12, 0, 0)  # fmt: skip
    ranges = payload_requests(server, head["head_bytes"])
    assert len(ranges) == 2 and not any("," in r for r in ranges), ranges  # no multipart
    sizes = [int(r[6:].split("-")[1]) - int(r[6:].split("-")[0]) + 1 for r in ranges]
    assert sum(sizes) == row["fetch_bytes"]  # block lists and frames, nothing else
    assert done.counters["downloaded"] == server.body_bytes


def test_front_bundle_verifies_and_streams_whole(board, signer, served):
    old = release(1)
    new = next_release(old)
    path = signer(image(new), bases=[image(old)])
    assert verify_file(path, Trust(signer.root)).format == 2  # the front is read and hashed
    b = board(signer.root)
    put(b.slot_a, image(old))
    server = served(path)
    server.faults.ignore_range = True
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert done.counters is None  # streamed whole: the front read, hashed and not used


def test_a_charger_on_another_release_takes_frames_and_units(board, signer, served):
    # Packed for release 1; this charger runs something else, which shares release 1's
    # first 100 blocks only: the frames bring what release 1 lacks, the units the rest.
    old = release(1)
    new = next_release(old)
    path = signer(image(new), bases=[image(old)])
    other = old[:100] + release(7)[100:]
    b = board(signer.root)
    put(b.slot_a, image(other))
    server = served(path)
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    c = done.counters
    assert c["front"] > 0 and c["remote"] > 0 and c["refetched"] == 0, c


def test_a_charger_with_nothing_fetches_everything_and_installs(board, signer, served):
    old = release(1)
    new = next_release(old)
    path = signer(image(new), bases=[image(old)])
    b = board(signer.root)
    put(b.slot_a, b"")
    server = served(path)
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert done.counters["front"] == 12 and done.counters["refetched"] == 0


def test_frames_beyond_the_memory_bound_come_as_units(board, signer, served, monkeypatch):
    old = release(1)
    new = next_release(old)
    path = signer(image(new), bases=[image(old)])
    monkeypatch.setattr(adaptive, "FRAME_MEMORY", 0)
    b = board(signer.root)
    put(b.slot_a, image(old))
    server = served(path)
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert (done.counters["front"], done.counters["remote"]) == (0, 12)


def test_a_lying_server_spoils_frames_and_the_groups_come_from_their_units(board, signer, served):
    old, new, path, b = on_base(board, signer)
    server = served(path)
    index = _index(path)
    front = min(v[2] for v in index.front.values())  # the first frame's offset
    server.faults.lie_after = _payload_offset(path) + front  # every frame has a flipped byte
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)  # nothing the liar sent reached the slot
    assert done.counters["refetched"] > 0


def test_power_cut_mid_install_fetches_no_frame_it_wrote(board, signer, served):
    old, new, path, b = on_base(board, signer)
    whole = plan_of(b, path, signer.root)["payloads"][0]
    put(b.slot_b, image(new[:120]) + os.urandom(BLOCK) * 3)  # the cut came at block 120
    after = plan_of(b, path, signer.root)["payloads"][0]
    server = served(path)
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    fresh_before = len([blk for blk in new[:120] if blk not in old])
    assert done.counters["front"] == 12 - fresh_before
    assert after["fetch_bytes"] < whole["fetch_bytes"]
    assert after["frames"] < whole["frames"]


def test_an_entry_naming_no_or_foreign_hot_blocks_is_refused():
    index = _small_index({0: 100})
    n = index.groups[0][1]
    good = bytes(4 * n) + b"\x01" + bytes((n + 7) // 8 - 1)
    index.take_entry(0, good)
    assert index.hot[0] == [0]
    with pytest.raises(MalformedBundle, match="names 0 hot blocks for a 100-byte frame"):
        index.take_entry(0, bytes(4 * n) + bytes((n + 7) // 8))
    with pytest.raises(MalformedBundle, match="front entry is"):
        index.take_entry(0, good[:-1])
    assert n == 10  # so the last bitmap byte has bits past the group's end
    bits = bytearray((n + 7) // 8)
    bits[-1] = 0x80  # bit 15 >= n
    with pytest.raises(MalformedBundle, match="past its end"):
        index.take_entry(0, bytes(4 * n) + bytes(bits))


def test_a_frame_longer_than_its_group_is_refused():
    raw = ci.encode_index(BLOCK, 0, 10 * BLOCK, 16, 64, [(10, 100, 7)], {0: 10 * BLOCK + 1})

    class Payload:
        installed_size = 10 * BLOCK
        size = 10 * 6 + 100 + 4 * 10 + 2 + 10 * BLOCK + 1

    with pytest.raises(MalformedBundle, match="frame"):
        ci.parse_index(raw, Payload())


def test_cli_delta_base_packs_a_front_and_names_bad_bases(tmp_path, capsys):
    from agent.cli import main

    assert main(["keygen", "--type", "ed25519", "--out", str(tmp_path / "k")]) == 0
    key = str(tmp_path / "k.key")
    old, new = image(release(1)), image(next_release(release(1)))
    put(str(tmp_path / "old.img"), old)
    put(str(tmp_path / "new.img"), new)
    common = ["bundle", "create", "--key", key, "--version", "2.0.0", "--security-version", "1",
              "--model", MODEL, "--hw-rev", HW, "--payload",
              "rootfs:rootfs:%s:zstd-chunks" % (tmp_path / "new.img")]  # fmt: skip
    out = str(tmp_path / "b.cub")
    assert main(common + ["--delta-base", "rootfs=%s" % (tmp_path / "old.img"), "-o", out]) == 0
    assert _index(out).front  # frames for what old.img lacks
    capsys.readouterr()
    assert main(["bundle", "inspect", out]) == 0
    shown = capsys.readouterr().out
    assert "CUBNDL2 bundle" in shown and "front for the --delta-base releases: " in shown
    assert main(["bundle", "inspect", "--json", out]) == 0
    facts = json.loads(capsys.readouterr().out)["manifest"]["payloads"][0]["chunk_index"]
    assert facts["front_bytes"] == _index(out).front_size > 0 and facts["blocks"] == 208
    for bad, said in (("rootfs", "is not NAME=IMAGE"), ("app=%s" % (tmp_path / "old.img"),
                      "no zstd-chunks payload is named app"),
                      ("rootfs=%s" % (tmp_path / "missing"), "not a readable image")):  # fmt: skip
        code = main(common + ["--delta-base", bad, "-o", str(tmp_path / "x.cub")])
        err = capsys.readouterr().err
        assert code != 0 and said in err and "Traceback" not in err, err
        assert not os.path.exists(tmp_path / "x.cub")


# -- helpers ---------------------------------------------------------------------------------


def _payload_offset(path):
    from agent.bundle import format as fmt

    with open(path, "rb") as f:
        header = f.read(fmt.HEADER_SIZE)
        length = fmt.parse_header(header)
    manifest = _manifest(path)
    return dict((p.name, o) for p, o in fmt.payload_offsets(length, manifest))["rootfs"]


def _manifest(path):
    from agent.bundle import format as fmt
    from agent.core.envelope import MANIFEST_TYPE, parse_envelope
    from agent.core.manifest import parse_manifest

    with open(path, "rb") as f:
        length = fmt.parse_header(f.read(fmt.HEADER_SIZE))
        env = parse_envelope(f.read(length), MANIFEST_TYPE)
    return parse_manifest(env.payload)


def _index(path):
    from agent.bundle import chunked
    from agent.bundle import format as fmt

    manifest = _manifest(path)
    with open(path, "rb") as f:
        length = fmt.parse_header(f.read(fmt.HEADER_SIZE))
        data = f.read()
    for payload, offset in fmt.index_offsets(length, manifest):
        stored = data[offset - fmt.HEADER_SIZE :][: payload.index["size"]]
        return chunked.read_index(stored, payload)


def _small_index(frames):
    return ci.ChunkIndex(BLOCK, 0, 10 * BLOCK, 10, 16, 64, [(0, 10, 0, 100, 7)], frames)


def _tampered(path, out, edits):
    """A copy of the bundle at `path` whose stored payload bytes differ at {offset: bytes}
    (what a lying server sends, every time it is asked)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    at = _payload_offset(path)
    for offset, new in edits.items():
        data[at + offset : at + offset + len(new)] = new
    put(out, bytes(data))
    return out


def test_an_entry_hiding_a_zero_block_ends_in_no_traceback(board, signer, served, tmp_path):
    # A lying server sends a front entry whose short id for a zero block is another: the
    # block is planned as fetched, and the group's detail (fetched for its other blocks)
    # gives it no unit. It must be taken as the zero block it is, not asked for as an
    # empty range between two new blocks (which ended the install in "generator raised
    # StopIteration").
    old = release(1)
    new = next_release(old)
    rng = random.Random(5)
    new[90], new[91], new[92] = rng.randbytes(BLOCK), bytes(BLOCK), rng.randbytes(BLOCK)
    path = signer(image(new), bases=[image(old)])
    index = _index(path)
    g = index.group_of(91)
    first = index.groups[g][0]
    assert g in index.front, "block 91's group has an entry"
    liar = _tampered(path, str(tmp_path / "liar.cub"),
                     {index.front[g][0] + 4 * (91 - first): b"\x12\x34\x56\x78"})  # fmt: skip
    b = board(signer.root)
    put(b.slot_a, b"")  # nothing local: the group's other blocks come as units
    server = served(liar)
    done = run(b, server.url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert done.counters["remote"] > 0 and done.counters["front"] > 0, done.counters


def test_packed_for_two_bases_a_charger_skips_frames_it_needs_little_of(board, signer, served):
    # Packed for release 1 and an unrelated one: nearly every block is hot for the other, so
    # a group's frame holds far more than a charger on release 1 lacks. It takes units for
    # such groups (frames it needs at least half of stay frames): without that rule it
    # planned about 4x the bytes of a bundle without a front, now less than twice.
    old = release(1)
    new = next_release(old)
    b = board(signer.root)
    put(b.slot_a, image(old))
    plain = plan_of(b, signer(image(new), name="plain.cub"), signer.root)["payloads"][0]
    path = signer(image(new), bases=[image(old), image(release(2))], name="two.cub")
    two = plan_of(b, path, signer.root)["payloads"][0]
    assert two["fetch_bytes"] < 2 * plain["fetch_bytes"], (two, plain)
    assert two["blocks"]["remote"] > 0  # units where a frame would be mostly waste
    done = run(b, served(path).url("b.cub"))
    assert b.read_slot("B") == image(new)
    assert done.counters["refetched"] == 0
