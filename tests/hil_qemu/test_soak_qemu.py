"""The short power-cut soak on real U-Boot (`make soak` runs the long one, hil/soak_qemu.py).

QEMU is killed in the middle of U-Boot's saveenv (which tears this build's single-copy env:
U-Boot comes back on its default env and finds the boot script by distro boot) and at a
random instant of a boot. A good release still commits (the journey arms the new slot again
when the env forgot the trial); one that crashes on boot still falls back by the bootloader's
attempt counting alone, after at most trial_attempts boots.
"""

import os

import pytest

from hil import soak_qemu

pytestmark = pytest.mark.skipif(
    bool(soak_qemu.MISSING), reason="QEMU rig unavailable: %s" % "; ".join(soak_qemu.MISSING)
)
SEED = int(os.environ.get("CHARGER_SOAK_SEED", "18"))


def test_short_qemu_soak_kills_during_saveenv_and_boot(tmp_path, capsys):
    results, summary = soak_qemu.run(2, SEED, str(tmp_path))
    with capsys.disabled():
        print(summary)
    problems = [soak_qemu.line(r) for r in results if r["problems"]]
    assert not problems, "\n".join(problems)
    assert [r["final"] for r in results] == ["Committed", "RolledBack"]
    assert results[1]["cause"] == "crash" and results[1]["new_boots"] <= 3
