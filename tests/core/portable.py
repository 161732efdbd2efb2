"""Checks of the core's parsers and decisions that must behave the same under MicroPython.

MicroPython's json, str and int differ from CPython's in small ways (error types, unordered
dicts); these checks pin the behaviour the agent relies on. Plain functions, run by
tests/core/test_portable.py under pytest and by tests/micropython/run_core.mjs.
"""

import json

from agent.core import chunkindex as ci
from agent.core import lifecycle as lc
from agent.core import schedule, trial
from agent.core.errors import MalformedBundle, MalformedJob, WrongModel
from agent.core.jobs import JobMemory, job_from_dict, parse_job, rfc3339_to_epoch
from agent.core.journey import Journey

DEVICE = {"model": "acme-ac22"}
T0 = 1767225600


def check_equal(actual, expected, what):
    if actual != expected:
        raise AssertionError("%s:\n  expected %r\n  actual   %r" % (what, expected, actual))


def expect_error(cls, fn, *args):
    try:
        fn(*args)
    except cls as e:
        return str(e)
    raise AssertionError("expected %s from %r" % (cls.__name__, args))


def check_malformed_messages_are_rejected_cleanly():
    bomb = b"[" * 5000  # nesting deep enough to exhaust the JSON parser's recursion
    for raw in (b"", b"\xff\xfe\x00", b"{", b"[]", b"null", b'{"id": 1}', b"x" * 9000, bomb):
        expect_error(MalformedJob, parse_job, raw, DEVICE)


def check_wrong_model_names_both_models():
    raw = b'{"id": "j", "url": "https://x/y", "version": "2", "model": "acme-dc50"}'
    message = expect_error(WrongModel, parse_job, raw, DEVICE)
    check_equal("acme-dc50" in message and "acme-ac22" in message, True, message)


def check_job_round_trip_through_json():
    doc = {"id": "j", "url": "https://x/y", "version": "2", "jitter_s": 60}
    doc["window"] = {"start": "22:00", "end": "03:00"}
    doc["installDateTime"] = "2026-01-01T12:30:00+01:00"
    raw = json.dumps(doc).encode()
    job = parse_job(raw, DEVICE)
    check_equal(job.install_at, 1767267000, "installDateTime")
    check_equal(job_from_dict(json.loads(json.dumps(job.to_dict()))) == job, True, "round trip")


def check_rfc3339():
    check_equal(rfc3339_to_epoch("2000-02-29T23:59:59.5Z"), 951868799, "leap day")
    check_equal(rfc3339_to_epoch("1969-12-31T23:00:00-01:00"), 0, "negative offset")
    check_equal(rfc3339_to_epoch("2026-01-01 00:00:00"), None, "no zone")


def check_window_crossing_midnight():
    job = parse_job(
        b'{"id":"j","url":"https://x/y","version":"2","window":{"start":"22:00","end":"03:00"}}',
        DEVICE,
    )
    check_equal(schedule.decide(T0 + 3600, 0, job, False, 0), ("go",), "01:00 inside")
    check_equal(
        schedule.decide(T0 + 4 * 3600, 0, job, False, 0),
        ("wait", T0 + 22 * 3600, schedule.WAIT_WINDOW),
        "04:00 waits for 22:00",
    )


def check_trial_verdict_order_does_not_depend_on_dicts():
    policy = trial.TrialPolicy(60, ["zeta", "alpha", "mid"])
    results = {"zeta": (False, "z"), "mid": (False, "m"), "alpha": (True, "ok")}
    check_equal(policy.verdict(results, 1, 0), ("failed", "mid", "m"), "first failing in order")


def check_memory_is_bounded_and_ordered():
    memory = JobMemory(limit=2)
    for job_id in ("a", "b", "c"):
        memory.remember(job_id)
    check_equal(memory.to_list(), ["b", "c"], "memory")


def check_illegal_event_is_an_error():
    expect_error(lc.IllegalTransition, lc.next_state, lc.TRIAL, lc.CANCEL)


def check_record_round_trip_keeps_the_journey():
    j = Journey(JobMemory())
    job = parse_job(b'{"id":"j","url":"https://x/y","version":"2"}', DEVICE)
    j.offer(job, T0, "A", "B", 0.5)
    record = json.loads(json.dumps(j.to_record()))
    again = Journey.from_record(record)
    check_equal(json.dumps(again.to_record()) == json.dumps(record) or again.to_record() == record,
                True, "record")  # fmt: skip
    check_equal(again.state, lc.DOWNLOAD_SCHEDULED, "state")


class _Payload:
    def __init__(self, size, installed_size):
        self.size = size
        self.installed_size = installed_size


def check_chunk_index_groups_and_details():
    # 40 blocks of 512 bytes: ids 0..39 (modulus 8: groups end after 0, 8, 16, ...).
    ids = list(range(40))
    zero = ci.block_id(bytes(512))
    cut = ci.groups(ids, zero, 8, 32)
    check_equal(cut[:3], [(0, 1), (1, 8), (9, 8)], "groups end after a multiple of 8")
    lengths = [100] * 40
    entries = [(n, 100 * n, ci.group_id(ids[a : a + n])) for a, n in cut]
    raw = ci.encode_index(512, 0, 40 * 512, 8, 32, entries)
    payload = _Payload(ci.detail_size(40) + 4000, 40 * 512)
    index = ci.parse_index(raw, payload)
    check_equal((index.count, len(index.groups), index.stored_size), (40, len(cut), 4000), "sizes")
    check_equal(index.group_of(9), 2, "block 9 is in the third group")
    first, n = cut[2]
    detail = b"".join(ci.short_id(i).to_bytes(4, "big") for i in ids[first : first + n])
    detail += b"".join(x.to_bytes(2, "big") for x in lengths[first : first + n])
    index.take_detail(2, detail)
    check_equal((index.short[9], index.offsets[9]), (ci.short_id(9), 900), "block 9 named")
    check_equal(index.matches(2, ids[first : first + n]), True, "the group's blocks, its id")
    check_equal(index.matches(2, ids[first + 1 : first + n + 1]), False, "others are not")
    wrong = detail[: 4 * n] + (200).to_bytes(2, "big") + detail[4 * n + 2 :]
    expect_error(MalformedBundle, index.take_detail, 2, wrong)  # its lengths add up to more
    check_equal(index.take_ids(1, ids[1:9]), True, "a slot's own blocks with the group's id")
    check_equal(index.take_ids(1, ids[2:10]), False, "other blocks do not make the group")
    expect_error(MalformedBundle, ci.parse_index, raw[:-1], payload)
    expect_error(MalformedBundle, ci.parse_index, raw, _Payload(payload.size + 1, 40 * 512))
    # A front (CUIDX4): group 2 has an entry and a 300-byte frame of its hot blocks.
    raw = ci.encode_index(512, 0, 40 * 512, 8, 32, entries, {2: 300, 3: 0})
    size = payload.size + ci.entry_size(cut[2][1]) + ci.entry_size(cut[3][1]) + 300
    index = ci.parse_index(raw, _Payload(size, 40 * 512))
    check_equal((sorted(index.front), index.front_size), ([2, 3], size - payload.size), "front")
    bits = bytearray((n + 7) // 8)
    bits[0] = 0x05  # blocks 0 and 2 of the group
    index.take_entry(2, detail[: 4 * n] + bytes(bits))
    check_equal(index.hot[2], [first, first + 2], "hot blocks from the entry's bitmap")
    expect_error(MalformedBundle, index.take_entry, 2, detail[: 4 * n] + bytes(len(bits)))
    expect_error(MalformedBundle, index.take_entry, 3, detail[: 4 * n] + bytes(bits))


CHECKS = (
    check_chunk_index_groups_and_details,
    check_malformed_messages_are_rejected_cleanly,
    check_wrong_model_names_both_models,
    check_job_round_trip_through_json,
    check_rfc3339,
    check_window_crossing_midnight,
    check_trial_verdict_order_does_not_depend_on_dicts,
    check_memory_is_bounded_and_ordered,
    check_illegal_event_is_an_error,
    check_record_round_trip_keeps_the_journey,
)


def run_all():
    passed, failures = [], []
    for fn in CHECKS:
        try:
            fn()
            passed.append(fn.__name__)
        except Exception as e:  # noqa: BLE001 - report every check, then fail
            failures.append((fn.__name__, "%s: %s" % (type(e).__name__, e)))
    return passed, failures
