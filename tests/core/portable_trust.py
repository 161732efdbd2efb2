"""The floors and the canonical-key rule of agent/core, as plain checks that run the same
under CPython (tests/core/test_portable_trust.py) and MicroPython (tests/micropython/run_core.mjs).
"""

import binascii

from agent.core import floors, keyring
from agent.core.errors import ConfigError, NotYetValid

T0 = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86400


def check_equal(actual, expected, what):
    if actual != expected:
        raise AssertionError("%s:\n  expected %r\n  actual   %r" % (what, expected, actual))


def expect_error(cls, fn, *args):
    try:
        fn(*args)
    except cls as e:
        return str(e)
    raise AssertionError("expected %s from %r" % (cls.__name__, args))


def check_floors_only_merge_upwards():
    a = {"security_version": 5, "root_version": 1, "not_before": T0}
    b = {"security_version": 3, "root_version": 2}
    merged = floors.merge(a, b, {})
    check_equal(merged, {"security_version": 5, "root_version": 2, "not_before": T0}, "merge")
    check_equal(floors.merge(), floors.empty(), "nothing merged")


def check_malformed_floor_records_are_refused():
    for bad in (None, [], 0, "", "str", {"security_version": True}, {"security_version": -1},
                {"security_version": "5"}, {"security_version": 1.5}, {"mystery": 1},
                {"not_before": 1 << 60}):  # fmt: skip
        expect_error(ConfigError, floors.parse, bad, "floors", ConfigError)
    check_equal(floors.parse({}, "floors", ConfigError), floors.empty(), "empty object")


def check_floor_text_is_digits_only():
    good = floors.parse_text({"security_version": "7", "not_before": ""}, "env", ConfigError)
    check_equal(good["security_version"], 7, "digits")
    check_equal(good["not_before"], 0, "empty is 0")
    for bad in ("-1", "0x10", " 7", "7a", "\u00b2", "9" * 17):
        expect_error(ConfigError, floors.parse_text, {"root_version": bad}, "env", ConfigError)


def check_effective_now_never_goes_below_the_floor():
    check_equal(floors.effective_now(0, T0), T0, "clock at 1970")
    check_equal(floors.effective_now(T0 + 5, T0), T0 + 5, "clock ahead of the floor")


def check_created_far_ahead_is_refused():
    floors.check_created(T0 + DAY, "bundle", T0, 0)  # exactly the tolerance
    message = expect_error(NotYetValid, floors.check_created, T0 + DAY + 1, "bundle", T0, 0)
    if "more than 86400 s" not in message:
        raise AssertionError(message)
    lost_power = expect_error(NotYetValid, floors.check_created, T0 + 2 * DAY, "b", 0, T0)
    if "RTC probably lost power" not in lost_power:
        raise AssertionError(lost_power)


def check_sync_time_far_past_the_clock_is_ignored():
    check_equal(floors.sync_time(T0, T0 + 60), T0, "a real sync")
    check_equal(floors.sync_time(T0 + 365 * DAY, T0), 0, "a forged sync")
    check_equal(floors.sync_time(None, T0), 0, "no sync")


def check_only_canonical_key_encodings():
    point = b"\x04" + b"\x11" * 64
    der = binascii.unhexlify("3059301306072a8648ce3d020106082a8648ce3d030107034200") + point
    check_equal(keyring.is_canonical("ecdsa-p256", der), True, "uncompressed P-256")
    compressed = binascii.unhexlify("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    check_equal(keyring.is_canonical("ecdsa-p256", compressed + b"\x02" + b"\x11" * 32), False,
                "compressed P-256")  # fmt: skip
    ed = binascii.unhexlify("302a300506032b6570032100") + b"\x22" * 32
    check_equal(keyring.is_canonical("ed25519", ed), True, "ed25519")
    check_equal(keyring.is_canonical("ed25519", ed + b"\x00"), False, "ed25519 + junk")
    check_equal(keyring.is_canonical("ecdsa-p256", ed), False, "type confusion")


CHECKS = (
    check_floors_only_merge_upwards,
    check_malformed_floor_records_are_refused,
    check_floor_text_is_digits_only,
    check_effective_now_never_goes_below_the_floor,
    check_created_far_ahead_is_refused,
    check_sync_time_far_past_the_clock_is_ignored,
    check_only_canonical_key_encodings,
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
