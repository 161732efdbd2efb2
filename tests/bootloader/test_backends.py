"""Backend-specific behaviour: the boot-side twins, strict reading, OEM command failures."""

import os
import subprocess

import pytest

from agent.core.errors import BootEnvError, ConfigError
from bootloader_iface import open_backend, uboot_bootcount, uboot_rauc
from bootloader_iface.booted import slot_from_cmdline
from bootloader_iface.grubenv import GrubEnv
from bootloader_iface.uboot_env import UBootEnv
from tests.bootloader.conftest import ALTBOOTCMD, BASE_ENV, fw_printenv, write_fw_config

SLOTS = ("A", "B")

# --- boot side: RAUC-style -----------------------------------------------------------------


def test_rauc_boot_select_counts_down_first_slot_with_attempts():
    env = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "1", "other": "x"}
    slot, new = uboot_rauc.boot_select(env)
    assert slot == "B"
    assert new == dict(env, BOOT_B_LEFT="0", BOOT_LAST="B")
    slot, new = uboot_rauc.boot_select(new)
    assert (slot, new["BOOT_A_LEFT"]) == ("A", "2")


def test_rauc_boot_select_fills_missing_variables_like_the_script():
    slot, new = uboot_rauc.boot_select({})
    assert slot == "A"
    assert new == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "2", "BOOT_B_LEFT": "3", "BOOT_LAST": "A"}


def test_rauc_boot_select_resets_when_all_spent():
    env = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0"}
    slot, new = uboot_rauc.boot_select(env)
    assert slot is None
    assert (new["BOOT_A_LEFT"], new["BOOT_B_LEFT"]) == ("3", "3")
    assert "BOOT_LAST" not in new  # nothing booted: the board resets
    assert uboot_rauc.boot_select(new)[0] == "B"


def test_rauc_boot_select_ends_a_trial_reset_by_watchdog_or_panic_at_once():
    trial = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "2", "BOOT_TRIAL": "B",
             "BOOT_LAST": "B"}  # fmt: skip
    for reset in ("watchdog", "panic"):
        slot, new = uboot_rauc.boot_select(trial, reset=reset)
        assert (slot, new["BOOT_B_LEFT"], new["BOOT_A_LEFT"]) == ("A", "0", "2")
        assert new["BOOT_LAST"] == "A"
    # A power loss (or a board that cannot tell) leaves the attempts to resume the trial.
    for reset in ("power-on", "reboot", None, "unknown"):
        assert uboot_rauc.boot_select(trial, reset=reset) == ("B", dict(trial, BOOT_B_LEFT="1"))
    # Outside a trial, or once the trial slot is no longer the one that ran, a crash costs
    # nothing more.
    committed = dict(trial, BOOT_TRIAL="")
    assert uboot_rauc.boot_select(committed, reset="watchdog")[0] == "B"
    fallen = dict(trial, BOOT_ORDER="A B", BOOT_LAST="A")
    assert uboot_rauc.boot_select(fallen, reset="watchdog")[1]["BOOT_B_LEFT"] == "2"


def test_rauc_watchdog_reset_of_the_old_slot_before_the_trial_ran_costs_the_trial_nothing():
    # try_slot(B) has run on A, then A's shutdown hung and the watchdog reset the board:
    # B never ran, so its trial keeps every attempt (a good release is not blamed).
    armed = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3", "BOOT_TRIAL": "B",
             "BOOT_LAST": "A"}  # fmt: skip
    for reset in ("watchdog", "panic"):
        assert uboot_rauc.boot_select(armed, reset=reset) == (
            "B", dict(armed, BOOT_B_LEFT="2", BOOT_LAST="B"))  # fmt: skip


@pytest.mark.parametrize("backend", ["simulated", "grub", "uboot-rauc"])
def test_trial_marker_follows_try_good_and_bad(tmp_path, backend):
    if backend == "grub":
        GrubEnv(str(tmp_path / "grubenv")).create()
    fw_config = None
    if backend == "uboot-rauc":
        fw_config, _ = write_fw_config(tmp_path, redundant=True)
        UBootEnv(fw_config).format(dict(BASE_ENV))
    options = {"state": str(tmp_path / "env.json"), "grubenv": str(tmp_path / "grubenv"),
               "fw_env_config": fw_config}  # fmt: skip
    boot = open_backend(backend, SLOTS, options)
    boot.mark_good("A")
    boot.try_slot("B", 3)
    assert boot.env.read()["BOOT_TRIAL"] == "B"
    if fw_config:  # what the boot script reads is what the Linux-side tools read too
        assert fw_printenv(fw_config)["BOOT_TRIAL"] == "B"
    if backend == "grub":  # and GRUB's own tool
        listed = subprocess.run(["grub-editenv", str(tmp_path / "grubenv"), "list"],
                                capture_output=True, check=True, text=True).stdout  # fmt: skip
        assert "BOOT_TRIAL=B" in listed.splitlines() and "BOOT_B_LEFT=3" in listed.splitlines()
    boot.mark_good("A")  # the old slot's healthy boot does not end B's trial
    boot.try_slot("B", 3)
    assert boot.env.read()["BOOT_TRIAL"] == "B"
    boot.mark_bad("B")
    assert "BOOT_TRIAL" not in boot.env.read()


def test_rauc_boot_select_is_lenient_like_hush():
    # `test garbage -gt 0` is false in U-Boot; unknown names in BOOT_ORDER are skipped.
    env = {"BOOT_ORDER": "C A B", "BOOT_A_LEFT": "x", "BOOT_B_LEFT": "2"}
    assert uboot_rauc.boot_select(env)[0] == "B"


# --- boot side: bootcount ------------------------------------------------------------------


def test_bootcount_boot_select_counts_only_when_armed():
    env = {"boot_slot": "A", "bootcount": "0", "bootlimit": "1", "altbootcmd": ALTBOOTCMD}
    assert uboot_bootcount.boot_select(env) == ("A", env)  # not armed: nothing saved


def test_bootcount_boot_select_falls_back_at_once_after_a_crash_of_the_slot_that_ran():
    armed = {"boot_slot": "B", "upgrade_available": "1", "bootcount": "0", "bootlimit": "3",
             "altbootcmd": ALTBOOTCMD}  # fmt: skip
    # The first armed boot: B has not run yet (a watchdog reset of A going down costs nothing).
    slot, env = uboot_bootcount.boot_select(armed, reset="watchdog")
    assert (slot, env["bootcount"]) == ("B", "1")
    # B ran and the watchdog or a panic reset it: altbootcmd at once, not after bootlimit.
    for reset in ("watchdog", "panic"):
        slot, after = uboot_bootcount.boot_select(env, reset=reset)
        assert (slot, after["upgrade_available"], after["bootcount"]) == ("A", "0", "0")
    # A power loss (or no word) keeps the trial going on its remaining attempts.
    for reset in ("power-on", "reboot", None):
        assert uboot_bootcount.boot_select(env, reset=reset) == ("B", dict(env, bootcount="2"))
    # Not armed: a crash of the committed slot changes nothing.
    good = {"boot_slot": "A", "upgrade_available": "0", "bootcount": "0", "bootlimit": "3",
            "altbootcmd": ALTBOOTCMD}  # fmt: skip
    assert uboot_bootcount.boot_select(good, reset="watchdog") == ("A", good)


def test_bootcount_boot_select_runs_altbootcmd_past_the_limit():
    env = {"boot_slot": "B", "upgrade_available": "1", "bootcount": "0", "bootlimit": "2"}
    env["altbootcmd"] = ALTBOOTCMD
    slots = []
    for _ in range(3):
        slot, env = uboot_bootcount.boot_select(env)
        slots.append(slot)
    assert slots == ["B", "B", "A"]
    assert (env["boot_slot"], env["upgrade_available"], env["bootcount"]) == ("A", "0", "0")


def test_bootcount_boot_select_without_altbootcmd_stops():
    env = {"boot_slot": "B", "upgrade_available": "1", "bootcount": "1", "bootlimit": "1"}
    assert uboot_bootcount.boot_select(env)[0] is None


# --- strict agent side ---------------------------------------------------------------------


def rauc_backend(tmp_path, **env):
    cfg, _ = write_fw_config(tmp_path, True)
    UBootEnv(cfg).format(dict(BASE_ENV, **env))
    return cfg, open_backend("uboot-rauc", SLOTS, {"fw_env_config": cfg})


@pytest.mark.parametrize(
    "env",
    [
        {"BOOT_ORDER": "A C"},
        {"BOOT_ORDER": "A A"},
        {"BOOT_A_LEFT": "x"},
        {"BOOT_A_LEFT": "12"},
        {"BOOT_B_LEFT": "-1"},
        {"BOOT_A_LEFT": "\u00b2"},  # str.isdigit() says yes, int() raised ValueError
    ],
)
def test_rauc_backend_refuses_garbage_instead_of_guessing(tmp_path, env):
    _, boot = rauc_backend(tmp_path, **env)
    with pytest.raises(BootEnvError):
        boot.primary_slot()
    with pytest.raises(BootEnvError):
        boot.try_slot("B")


def test_rauc_backend_keeps_every_other_variable(tmp_path):
    cfg, boot = rauc_backend(tmp_path, BOOT_ORDER="A B", vendor_secret="keep me")
    boot.mark_good("A")
    boot.try_slot("B", 2)
    boot.mark_bad("B")
    env = fw_printenv(cfg)
    assert env["vendor_secret"] == "keep me"
    assert env["bootcmd"] == BASE_ENV["bootcmd"]
    assert (env["BOOT_ORDER"], env["BOOT_B_LEFT"]) == ("A B", "0")


def test_each_contract_call_is_one_env_write(tmp_path):
    cfg, boot = rauc_backend(tmp_path, BOOT_ORDER="A B")
    writes = []
    real = boot.env.write
    boot.env.write = lambda *a: writes.append(a) or real(*a)
    boot.mark_good("A")
    boot.try_slot("B", 2)
    boot.mark_bad("B")
    assert len(writes) == 3


def test_rauc_backend_missing_fw_env_config_is_refused(tmp_path):
    with pytest.raises(BootEnvError, match="config"):
        open_backend("uboot-rauc", SLOTS, {"fw_env_config": str(tmp_path / "none")})


def bootcount_backend(tmp_path, **env):
    cfg, _ = write_fw_config(tmp_path, True)
    UBootEnv(cfg).format(dict(BASE_ENV, **env))
    return cfg, open_backend("uboot-bootcount", SLOTS, {"fw_env_config": cfg})


def test_bootcount_backend_without_slot_var_refuses(tmp_path):
    _, boot = bootcount_backend(tmp_path)
    with pytest.raises(BootEnvError, match="boot_slot"):
        boot.primary_slot()


def test_bootcount_backend_refuses_a_count_in_unicode_digits(tmp_path):
    """'²' passed str.isdigit() and int() raised ValueError instead of BootEnvError."""
    _, boot = bootcount_backend(tmp_path, boot_slot="A", altbootcmd=ALTBOOTCMD,
                                bootcount="\u00b2")  # fmt: skip
    with pytest.raises(BootEnvError, match="not a number"):
        boot.primary_slot()


def test_bootcount_backend_refuses_to_try_without_altbootcmd(tmp_path):
    cfg, boot = bootcount_backend(tmp_path, boot_slot="A")
    with pytest.raises(BootEnvError, match="altbootcmd"):
        boot.try_slot("B")
    assert fw_printenv(cfg).get("upgrade_available") is None  # nothing written


def test_bootcount_backend_arms_the_counter_for_u_boot(tmp_path):
    cfg, boot = bootcount_backend(tmp_path, boot_slot="A", altbootcmd=ALTBOOTCMD)
    boot.try_slot("B", 3)
    env = fw_printenv(cfg)
    assert (env["boot_slot"], env["upgrade_available"], env["bootcount"], env["bootlimit"]) == (
        "B",
        "1",
        "0",
        "3",
    )
    boot.mark_good("B")
    env = fw_printenv(cfg)
    assert (env["boot_slot"], env["upgrade_available"], env["bootcount"]) == ("B", "0", "0")


def test_grub_backend_writes_what_grub_cfg_reads(tmp_path):
    path = str(tmp_path / "grubenv")
    GrubEnv(path).create()
    boot = open_backend("grub", SLOTS, {"grubenv": path})
    boot.mark_good("A")
    boot.try_slot("B", 1)
    assert GrubEnv(path).read() == {
        "BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "1", "BOOT_TRIAL": "B",
    }  # fmt: skip
    boot.mark_good("B")
    assert "BOOT_TRIAL" not in GrubEnv(path).read()


def test_simulated_backend_corrupt_state_is_refused(tmp_path):
    state = tmp_path / "env.json"
    state.write_text("{not json")
    boot = open_backend("simulated", SLOTS, {"state": str(state), "booted": "A"})
    with pytest.raises(BootEnvError):
        boot.primary_slot()


def test_simulated_backend_needs_a_state_file():
    with pytest.raises(ConfigError):
        open_backend("simulated", SLOTS, {})


# --- booted slot from the kernel command line ----------------------------------------------


@pytest.mark.parametrize(
    "cmdline, slot",
    [
        ("console=ttyS0 charger.slot=B quiet", "B"),
        ("rauc.slot=A root=/dev/mmcblk0p2", "A"),
        ("charger.slot=A charger.slot=B", "B"),
        ("quiet", None),
    ],
)
def test_slot_from_cmdline(cmdline, slot):
    assert slot_from_cmdline(cmdline, SLOTS) == slot


def test_cmdline_naming_an_unknown_slot_is_refused():
    with pytest.raises(BootEnvError):
        slot_from_cmdline("charger.slot=rescue", SLOTS)


# --- the OEM command backend ---------------------------------------------------------------


def script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return str(path)


def command_backend(tmp_path, **overrides):
    ok = script(tmp_path, "ok.sh", 'echo "$@" >> %s/calls\necho A\n' % tmp_path)
    commands = dict((c, ok + " " + c + " {slot}") for c in ("mark_good", "mark_bad"))
    commands.update(primary=ok + " primary", attempts_left=ok + " left {slot}")
    commands["try"] = ok + " try {slot} {attempts}"
    commands.update(overrides)
    return open_backend("command", SLOTS, {"commands": commands, "timeout_s": 5})


def test_command_backend_passes_slot_and_attempts_as_words(tmp_path):
    boot = command_backend(tmp_path)
    boot.try_slot("B", 2)
    boot.mark_good("A")
    assert (tmp_path / "calls").read_text() == "try B 2\nmark_good A\n"


def test_command_backend_failure_is_a_boot_env_error(tmp_path):
    fail = script(tmp_path, "fail.sh", "echo 'flash locked' >&2\nexit 4\n")
    boot = command_backend(tmp_path, mark_bad=fail + " {slot}")
    with pytest.raises(BootEnvError, match="flash locked"):
        boot.mark_bad("B")


def test_command_backend_garbage_output_is_refused(tmp_path):
    for garbage in ("lots", "\u00b2"):  # '²' passed str.isdigit() and crashed int()
        boot = command_backend(tmp_path, attempts_left="echo " + garbage)
        with pytest.raises(BootEnvError, match="not a number"):
            boot.attempts_left("A")
    boot = command_backend(tmp_path, primary="echo C")
    with pytest.raises(BootEnvError, match="not a slot"):
        boot.primary_slot()


def test_command_backend_hanging_command_times_out(tmp_path):
    hang = script(tmp_path, "hang.sh", "exec sleep 30\n")
    boot = open_backend(
        "command",
        SLOTS,
        {"commands": dict((c, hang) for c in ("try", "mark_good", "mark_bad", "primary",
                                               "attempts_left")), "timeout_s": 0.5},
    )  # fmt: skip
    with pytest.raises(BootEnvError, match="timed out"):
        boot.primary_slot()


def test_command_backend_missing_commands_is_a_config_error():
    with pytest.raises(ConfigError, match="try"):
        open_backend("command", SLOTS, {"commands": {"mark_good": "x"}})


# --- boot ROMs for rigs ---------------------------------------------------------------------


def test_rauc_power_on_saves_before_booting_and_follows_the_reset(tmp_path):
    cfg, _ = write_fw_config(tmp_path, True)
    env = UBootEnv(cfg)
    env.format(dict(BASE_ENV, BOOT_ORDER="B A", BOOT_A_LEFT="0", BOOT_B_LEFT="0"))
    assert uboot_rauc.power_on(env) == "B"
    assert fw_printenv(cfg)["BOOT_B_LEFT"] == "2"  # reset to 3, then one attempt used


def test_bootcount_power_on_falls_back_and_saves(tmp_path):
    cfg, _ = write_fw_config(tmp_path, True)
    env = UBootEnv(cfg)
    env.format(dict(BASE_ENV, boot_slot="B", upgrade_available="1", bootcount="1", bootlimit="1"))
    with pytest.raises(BootEnvError, match="prompt"):  # no altbootcmd: U-Boot stops
        uboot_bootcount.power_on(env)
    env.write({"altbootcmd": ALTBOOTCMD, "bootcount": "1"})
    assert uboot_bootcount.power_on(env) == "A"
    assert fw_printenv(cfg)["upgrade_available"] == "0"


@pytest.mark.parametrize("value", ["x", 0, 10, 2.5])
def test_bad_max_attempts_option_is_a_config_error(tmp_path, value):
    with pytest.raises(ConfigError):
        open_backend("simulated", SLOTS, {"state": str(tmp_path / "s.json"), "max_attempts": value})
