"""The shared MQTT message module (agent/core/messages.py) under CPython and MicroPython: what
the agent builds, the fleet controller parses back unchanged, and hostile payloads are refused
with MessageInvalid only. Plain functions, run by tests/core/test_messages.py and by
tests/micropython/run_core.mjs.
"""

import json

from agent.core import messages as m

DEVICE = {"id": "cp-1", "model": "AC22", "hardware_revision": "C", "group": "g1",
          "site": "depot-7", "site_type": "depot"}  # fmt: skip
BOOT = {"backend": "uboot-rauc", "booted": "B", "primary": "B",
        "slots": {"A": {"attempts_left": 3}, "B": {"attempts_left": 3}}}  # fmt: skip
SLOTS = {"A": {"version": "1.0.0", "state": "good"}, "B": {"version": "1.1.0", "state": "good"}}


def check_equal(actual, expected, what):
    if actual != expected:
        raise AssertionError("%s:\n  expected %r\n  actual   %r" % (what, expected, actual))


def expect_invalid(fn, doc):
    try:
        fn(doc)
    except m.MessageInvalid as e:
        return e.field
    raise AssertionError("expected MessageInvalid for %r" % (doc,))


def roundtrip(msg):
    return json.loads(m.encode(msg).decode("utf-8"))


def check_inventory_row_round_trips_with_site():
    rollbacks = [{"id": "j0", "version": "1.0.5", "result": "RolledBack", "cause": "crash"},
                 {"id": "j2", "version": "1.0.6", "result": "RolledBack",
                  "reason": m.REASON_POWER_LOSS, "cause": m.CAUSE_POWER_LOSS}]  # fmt: skip
    last = {"id": "j1", "version": "1.1.0", "result": "Committed"}
    row = m.inventory_message(DEVICE, BOOT, SLOTS, last, rollbacks, 100)
    check_equal("components" in row or "trust" in row, False, "left out when not given")
    got = m.parse_inventory(roundtrip(row))
    check_equal(got["site"], "depot-7", "site")
    check_equal(got["version"], "1.1.0", "running version is the booted slot's")
    check_equal(got["rollbacks"], ["1.0.5"], "rolled-back versions (the release's fault)")
    check_equal(got["power_loss_rollbacks"], ["1.0.6"], "rolled back by power cuts")
    check_equal(got["last_result"], "Committed", "last result")
    check_equal(got["components"], {}, "no components on a single-payload row")
    check_equal(got["security_floor"], None, "no trust row")
    components = {"rootfs": "1.1.0", "mcu-power": {"version": "4.2"}, "mcu-meter": None}
    row = m.inventory_message(DEVICE, BOOT, SLOTS, last, [], 100, components=components,
                              trust={"security_floor": 7, "problem": None})  # fmt: skip
    got = m.parse_inventory(roundtrip(row))
    check_equal(got["components"], {"rootfs": "1.1.0", "mcu-power": "4.2", "mcu-meter": None},
                "components (None while an MCU write is unfinished)")  # fmt: skip
    check_equal(got["security_floor"], 7, "anti-rollback floor from the trust row")


def check_status_round_trips_and_orders_by_seq():
    info = {"job_id": "j", "version": "2.0.0", "reason": m.REASON_TRIAL_FAILED, "check": "alarms"}
    msg = m.status_message(m.ROLLED_BACK, info, 7, 99.9)
    got = m.parse_status(roundtrip(msg))
    check_equal((got["seq"], got["status"], got["ts"]), (7, "RolledBack", 99), "status")
    check_equal(m.is_failure(got["status"], got["reason"]), True, "a failed trial fails")


def check_rollback_causes_blame_the_release_or_not():
    for cause in (m.CAUSE_CHECK_FAILED, m.CAUSE_REGRESSION, m.CAUSE_CRASH, "something new"):
        check_equal(m.is_failure(m.ROLLED_BACK, "x", cause), True, "halts on %r" % cause)
        check_equal(m.rollback_blame(cause), m.BLAME_RELEASE, "blame of %r" % cause)
    check_equal(m.is_failure(m.ROLLED_BACK, m.REASON_TRIAL_FAILED, m.CAUSE_POWER_LOSS), False,
                "the cause decides, not the reason")  # fmt: skip
    check_equal(m.rollback_blame(m.CAUSE_POWER_LOSS), m.BLAME_SITE, "power loss")
    check_equal(m.rollback_blame(m.CAUSE_UNEXPLAINED), m.BLAME_UNCLEAR, "unexplained resets")
    check_equal(m.is_failure(m.ROLLED_BACK, None, m.CAUSE_UNEXPLAINED), False,
                "unexplained resets do not count on their own")  # fmt: skip
    # An agent from before `cause`: judged by its reason.
    for reason in (m.REASON_TRIAL_FAILED, m.REASON_REGRESSION, m.REASON_NEVER_CAME_UP,
                   m.REASON_FELL_BACK, "something new", None):  # fmt: skip
        check_equal(m.is_failure(m.ROLLED_BACK, reason), True, "halts on %r" % reason)
    check_equal(m.rollback_blame(None, m.REASON_POWER_LOSS), m.BLAME_SITE, "old power loss")
    check_equal(m.rollback_blame(None, m.REASON_UNEXPLAINED), m.BLAME_UNCLEAR, "old resets")
    check_equal(m.is_failure(m.COMMITTED), False, "committed")
    check_equal(m.is_failure(m.DOWNLOAD_FAILED), True, "download failed")


def check_status_carries_cause_resets_and_bytes():
    info = {
        "job_id": "j",
        "version": "2",
        "reason": m.REASON_POWER_LOSS,
        "cause": m.CAUSE_POWER_LOSS,
        "evidence": {"resets": ["power-on", "power-on"]},
    }
    got = m.parse_status(roundtrip(m.status_message(m.ROLLED_BACK, info, 3, 5)))
    check_equal(got["cause"], "power-loss", "cause")
    got = m.parse_status(roundtrip(m.status_message(m.COMMITTED, {"job_id": "j",
                         "resets": ["power-on"]}, 4, 6)))  # fmt: skip
    check_equal(got["resets"], ["power-on"], "resets on Committed")
    check_equal(got["cause"], None, "no cause on Committed")
    info = {"job_id": "j", "progress": 40, "downloaded": 1200, "payload_bytes": 4096}
    got = m.parse_status(roundtrip(m.status_message(m.INSTALLING, info, 5, 7)))
    check_equal((got["downloaded"], got["payload_bytes"], got["progress"]), (1200, 4096, 40),
                "delta install bytes")  # fmt: skip
    expect_invalid(m.parse_status, {"status": "Committed", "seq": 1, "resets": "power-on"})
    expect_invalid(m.parse_status, {"status": "Installing", "seq": 1, "downloaded": -5})
    for name in ("seq", "downloaded", "payload_bytes", "ts"):
        expect_invalid(m.parse_status, {"status": "Installing", "seq": 1, name: m.MAX_INT})


def check_job_builder_refuses_what_the_agent_would_refuse():
    job = m.job_message("r:cp-1", "https://u/x.cub", "1.1.0", models=["AC22"],
                        install_at="2026-11-25T02:00:00Z", window={"start": "01:00",
                        "end": "05:00"}, jitter_s=900, retries=None)  # fmt: skip
    check_equal("retries" in job, False, "None fields are left out")
    check_equal(expect_invalid(lambda d: m.job_message(**d), {"job_id": "j", "url": "ftp://x",
                "version": "1"}), "job", "bad url")  # fmt: skip
    bad_window = {"job_id": "j", "url": "https://x", "version": "1", "window": {"start": "9"}}
    expect_invalid(lambda d: m.job_message(**d), bad_window)


def check_hostile_payloads_raise_message_invalid_only():
    for doc in ({}, {"status": "Exploded", "seq": 1}, {"status": "Idle", "seq": -1},
                {"status": "Idle", "seq": True}, {"status": 5, "seq": 1},
                {"status": "Idle", "seq": 1, "job_id": "x" * 5000}):  # fmt: skip
        expect_invalid(m.parse_status, doc)
    for doc in ({}, {"device_id": "a", "model": "m"}, {"device_id": 1, "model": "m",
                "hardware_revision": "r"}):  # fmt: skip
        expect_invalid(m.parse_inventory, doc)
    expect_invalid(m.parse_online, {"device_id": "a", "online": "yes"})
    expect_invalid(m.parse_health, {"job_id": "j", "phase": "trial", "verdict": "meh"})


def check_topics_split_back_into_device_and_suffix():
    t = m.topic("chargers", "cp-9", m.STATUS)
    check_equal(m.split_topic("chargers", t), ("cp-9", m.STATUS), "split")
    check_equal(m.split_topic("chargers", "chargers/cp-9/other"), (None, None), "foreign")
    check_equal(m.split_topic("chargers", "elsewhere/cp-9/update/status"), (None, None), "prefix")
    check_equal(m.device_filter("chargers", m.STATUS), "chargers/+/update/status", "filter")


CHECKS = [
    check_inventory_row_round_trips_with_site,
    check_status_round_trips_and_orders_by_seq,
    check_rollback_causes_blame_the_release_or_not,
    check_status_carries_cause_resets_and_bytes,
    check_job_builder_refuses_what_the_agent_would_refuse,
    check_hostile_payloads_raise_message_invalid_only,
    check_topics_split_back_into_device_and_suffix,
]


def run_all():
    passed, failures = [], []
    for fn in CHECKS:
        try:
            fn()
            passed.append(fn.__name__)
        except Exception as e:  # noqa: BLE001 - report every check, then fail
            failures.append((fn.__name__, "%s: %s" % (type(e).__name__, e)))
    return passed, failures
