"""Trial checks in isolation: the built-ins against in-memory stack and channel fakes (the
real ones run in tests/daemon/test_daemon.py and the HIL catalogue), and plug-in loading."""

import pytest

from agent.checks import BUILTIN, CheckFailed, TrialContext, load_check, load_checks
from agent.config import Config
from agent.core.errors import ConfigError
from agent.frontends.channel import FakeChannel
from agent.station.charging import FakeStack

RAW = {
    "device": {"id": "cp-1", "model": "M", "hardware_revision": "r"},
    "slots": {"A": {"rootfs": "a"}, "B": {"rootfs": "b"}},
    "bootloader": {"backend": "simulated"},
    "trial": {"window_s": 4, "alarms": {"observe_s": 1}, "communication": {"timeout_s": 0.2}},
}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def wait(self, seconds):
        self.now += seconds
        return True


def context(stack=None, channel=None, baseline=None, restarts=0):
    clock = Clock()
    channel = channel or FakeChannel(device_id="cp-1")
    channel.start()
    cfg = Config(RAW, "/nonexistent/agent.toml")
    return TrialContext(cfg, channel, stack or FakeStack(), baseline, clock, clock.now,
                        clock.wait, restarts)  # fmt: skip


def test_builtin_checks_load_by_name():
    assert [c.name for c in load_checks(sorted(BUILTIN))] == sorted(BUILTIN)


def test_oem_check_loads_from_module_and_class():
    check = load_check("tests.daemon.plugins:ContactorSelfTest")
    stack = FakeStack()
    stack.request = lambda cmd, **kw: {"ok": True, "closed": cmd == "contactor_test"}
    assert check.run(context(stack=stack)) == {"ok": True, "closed": True}
    stack.request = lambda cmd, **kw: {"ok": True, "closed": False}
    with pytest.raises(CheckFailed, match="contactor"):
        check.run(context(stack=stack))


def test_oem_check_loads_from_entry_point(mocker):
    mocker.patch(
        "agent.checks._entry_points",
        return_value={"contactor": "tests.daemon.plugins:ContactorSelfTest"},
    )
    assert load_check("contactor").name == "contactor"


@pytest.mark.parametrize("name", ["no-such-check", "tests.daemon.plugins:Missing", "nomod:X"])
def test_unknown_check_is_a_config_error(name):
    with pytest.raises(ConfigError):
        load_check(name)


def test_session_check_fails_when_the_stack_refuses():
    with pytest.raises(CheckFailed, match="start refused"):
        load_check("charging-session").run(context(stack=FakeStack(refuse=True)))
    assert load_check("charging-session").run(context())["energy_wh"] > 0


def test_alarm_check_flags_a_new_fault_code():
    stack = FakeStack()
    stack.recorded_alarms = [{"code": "GroundFailure", "ts": 1000.5}]
    with pytest.raises(CheckFailed, match="GroundFailure"):
        load_check("alarms").run(context(stack=stack, baseline={"codes": [], "rate_per_hour": 0}))
    baseline = {"codes": ["GroundFailure"], "rate_per_hour": 10000.0}
    load_check("alarms").run(context(stack=stack, baseline=baseline))


def test_alarm_check_flags_an_agent_crash_loop():
    with pytest.raises(CheckFailed, match="restarted 3 times"):
        load_check("alarms").run(context(restarts=3))


def test_communication_check_retries_then_fails_when_the_backend_never_answers():
    channel = FakeChannel(device_id="cp-1")
    channel.answer_pings = False
    with pytest.raises(CheckFailed, match="MQTT backend unreachable after"):
        load_check("communication").run(context(channel=channel))
    assert len(channel.messages("backend/ping")) >= 2  # it retried before giving up
