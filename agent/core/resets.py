"""Why the board restarted, and what a rollback was caused by: the words the journey decides with.

Invariant: a reset the board cannot explain is UNKNOWN, never guessed to be a power loss or a
crash; only WATCHDOG and PANIC count as the release's fault, and only a trial whose every
reset was a POWER_ON may be rolled back as "power-loss" (which a fleet does not halt on).

The platform supplies the facts of each boot to `Journey.resume` as a dict
{"reset": cause, "id": boot id, "attempts_left": n} (all optional): the daemon reads them from
the kernel command line, the watchdog's bootstatus and /proc (agent/control/system.py); a
MicroPython board maps its SoC's reset reason. Runs on MicroPython: strings and tuples only.
"""

# --- reset causes ----------------------------------------------------------------------------

AGENT_RESTART = "agent-restart"  # same boot: only the agent process was restarted
POWER_ON = "power-on"  # cold boot: the supply was lost (a power cut, brown-out)
WATCHDOG = "watchdog"  # the hardware watchdog reset the board: the software hung
PANIC = "panic"  # the kernel (or firmware) panicked and restarted the board
REBOOT = "reboot"  # an orderly software reboot (someone ran `reboot`)
UNKNOWN = "unknown"  # the board cannot tell

CRASHES = (WATCHDOG, PANIC)

# Names bootloaders and SoCs use for the same causes (kernel command line charger.reset=,
# Android's androidboot.bootreason=, U-Boot's "Reset cause:" words, ESP-IDF's esp_reset_reason).
# fmt: off
ALIASES = (
    ("power-on", POWER_ON), ("por", POWER_ON), ("cold", POWER_ON), ("poweron", POWER_ON),
    ("brownout", POWER_ON), ("power-loss", POWER_ON),
    ("watchdog", WATCHDOG), ("wdog", WATCHDOG), ("wdt", WATCHDOG),
    ("panic", PANIC), ("kernel_panic", PANIC), ("crash", PANIC),
    ("reboot", REBOOT), ("warm", REBOOT), ("software", REBOOT), ("sw", REBOOT),
    ("agent-restart", AGENT_RESTART),  # MicroPython's soft reset: the VM only, same boot
)
# fmt: on


def normalise(word):
    """The reset cause a platform's word names; UNKNOWN for anything else (or None)."""
    if not word:
        return UNKNOWN
    word = str(word).strip().lower()
    for alias, cause in ALIASES:
        if word == alias:
            return cause
    return UNKNOWN


# --- rollback causes (the `cause` field of a RolledBack status) -----------------------------

CHECK_FAILED = "check-failed"  # a trial check failed or stayed silent: the release is broken
REGRESSION = "regression"  # the observation after commit found a regression
CRASH = "crash"  # the new slot never came up, or a watchdog/panic reset hit its trial
POWER_LOSS = "power-loss"  # power losses used up the trial's boot attempts: not the release
UNEXPLAINED = "unexplained-resets"  # resets the board cannot explain used up the attempts


NEVER_CAME_UP = "new slot never came up"
FELL_BACK_IN_TRIAL = "new slot went down during the trial; the bootloader fell back"
USED_UP_BY_POWER_LOSS = "power losses used up the trial's boot attempts; the bootloader fell back"
USED_UP_BY_RESETS = (
    "resets of unknown cause used up the trial's boot attempts; the bootloader fell back"
)


def fallback(rebooting, trial_resets, reset):
    """{"reason", "cause", "evidence"} of a rollback because the bootloader brought the old
    slot back: before the agent came up on the new slot (`rebooting`), or during its trial
    after `trial_resets`; `reset` is the cause of the reset that ended the last attempt."""
    if rebooting:
        return {"reason": NEVER_CAME_UP, "cause": CRASH, "evidence": {"reset": reset}}
    seen = list(trial_resets)
    if reset is not None:
        seen.append(reset)
    cause = fallback_cause(seen)
    reason = FELL_BACK_IN_TRIAL
    if cause == POWER_LOSS:
        reason = USED_UP_BY_POWER_LOSS
    elif cause == UNEXPLAINED:
        reason = USED_UP_BY_RESETS
    return {"reason": reason, "cause": cause, "evidence": {"resets": seen}}


def fallback_cause(resets):
    """The rollback cause once the bootloader fell back during a trial that saw `resets`
    (the reset causes of every boot of the new slot after the first, and of the fallback)."""
    for cause in resets:
        if cause in CRASHES:
            return CRASH
    for cause in resets:
        if cause != POWER_ON:
            return UNEXPLAINED
    return POWER_LOSS if resets else UNEXPLAINED
