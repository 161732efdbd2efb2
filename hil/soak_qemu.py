"""The power-cut soak on real U-Boot (QEMU rig): QEMU is killed while U-Boot saves its env or boots.

`python -m hil.soak_qemu --journeys N --seed S`. The board is Debian's U-Boot (qemu_arm64)
in QEMU (hil/qemu.py), its env in pflash as that build has it (one copy, no redundancy), and
one virtio disk laid out like a product's: partition 1 (ext2) holds boot.scr, the board's
boot script (slot hooks + bootloader_iface/scripts/boot.cmd.rauc); partitions 2 and 3 are
slots A and B, each holding its release's "kernel": a U-Boot script that prints
CHARGER-BOOTED and powers off (a good release) or panics and resets (one that crashes on
boot). The env's bootcmd sources boot.scr; when a kill tears the env, U-Boot's built-in
default env finds the same boot.scr by distro boot, so the board still boots, on the
script's defaults.

The agent is the real journey (agent.core) on this host, writing the real env through
bootloader_iface's uboot-rauc backend; it acts while the board is off after a boot, as
Linux would while it runs. Each journey gets one kill, on the reboot into the new slot:
0-0.2 s after U-Boot starts saving its env, or at a random instant of the boot.
"""

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from agent.core import lifecycle as lc
from agent.core.jobs import JobMemory, parse_job
from agent.core.journey import Journey
from agent.core.trial import TrialPolicy
from agent.frontends.channel import encode_payload
from bootloader_iface import open_backend, uboot_rauc
from hil.drivers.console import ConsoleClosed, ConsoleTimeout
from hil.qemu import ENV_SIZE, QemuUBoot, board_env, missing_prerequisites

SLOTS = ("A", "B")
SCRIPT_PATH = os.path.join(os.path.dirname(uboot_rauc.__file__), "scripts", "boot.cmd.rauc")
PARTITION = {"A": 2, "B": 3}
SECTOR = 512
LAYOUT = (  # sfdisk: boot partition (bootable, for distro boot), then the two slots
    "label: dos\nstart=2048, size=8192, type=83, bootable\n"
    "start=10240, size=2048, type=da\nstart=12288, size=2048, type=da\n"
)
DISK_BYTES = 8 << 20
SLOT_BLOCKS = 8  # a slot's "kernel" script fits in 4 KiB
BOOTCMD = "virtio scan; load virtio 0:1 ${scriptaddr} boot.scr; source ${scriptaddr}"
HOOK = ("part start virtio 0 %d charger_blk; virtio read ${kernel_addr_r} ${charger_blk} %d; "
        "source ${kernel_addr_r}")  # fmt: skip
KILLS = ("saveenv", "boot")
BOOT_S = 1.5  # a boot of this board here, start to poweroff: the "boot" kill's horizon
T0 = 1767225600
MISSING = missing_prerequisites() + [t + " missing" for t in ("mkimage", "sfdisk", "mke2fs")
                                     if not shutil.which(t)]  # fmt: skip


def mkimage(text, out):
    """A legacy U-Boot script image of `text` (what `source` runs)."""
    src = out + ".cmd"
    with open(src, "w") as f:
        f.write(text)
    subprocess.run(["mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-d", src, out],
                   check=True, capture_output=True)  # fmt: skip
    with open(out, "rb") as f:
        return f.read()


def make_disk(workdir):
    """The board's disk: boot.scr on an ext2 partition 1, empty slot partitions 2 and 3."""
    disk = os.path.join(workdir, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(DISK_BYTES)
    subprocess.run(["sfdisk", "-q", disk], input=LAYOUT.encode(), check=True)
    hooks = "".join("setenv charger_boot_%s '%s'\n" % (s, HOOK % (PARTITION[s], SLOT_BLOCKS))
                    for s in SLOTS)  # fmt: skip
    with open(SCRIPT_PATH) as f:
        script = hooks + f.read()
    root = os.path.join(workdir, "bootfs")
    os.makedirs(root, exist_ok=True)
    mkimage(script, os.path.join(root, "boot.scr"))
    offset = "offset=%d" % (2048 * SECTOR)
    mke2fs = ["mke2fs", "-q", "-F", "-t", "ext2", "-d", root, "-E", offset, disk, "4096"]
    subprocess.run(mke2fs, check=True, capture_output=True)
    return disk


class QemuCharger:
    """One QEMU board and the agent's journey driven against its real env."""

    def __init__(self, workdir):
        self.dir = workdir
        self.disk = make_disk(workdir)
        env = board_env(bootcmd=BOOTCMD, BOOT_ORDER="A B", BOOT_A_LEFT="3", BOOT_B_LEFT="0")
        self.qemu = QemuUBoot(os.path.join(workdir, "qemu"), env=env, disks=[self.disk])
        config = os.path.join(workdir, "fw_env.config")
        with open(config, "w") as f:
            f.write("%s 0x0 0x%x\n" % (self.qemu.flash1, ENV_SIZE))
        self.boot = open_backend("uboot-rauc", SLOTS, {"fw_env_config": config, "in_place": True})
        self.policy = TrialPolicy(600, ["alarms", "charging-session", "communication"])
        self.releases = {}  # slot -> (version, kind)
        self.install("A", "1.0.0", "good")
        self.boots = self.kills = self.torn = 0
        self.booted, _ = self.power_on()
        self.boot.mark_good(self.booted)
        self.journal = None
        self.journey = Journey(JobMemory(), self.policy)

    def install(self, slot, version, kind):
        if kind == "good":
            text = "echo CHARGER-BOOTED ${bootargs} version=%s; poweroff\n" % version
        else:
            text = "echo CHARGER-PANIC version=%s; reset\n" % version
        image = mkimage(text, os.path.join(self.dir, "slot%s.img" % slot))
        assert len(image) <= SLOT_BLOCKS * SECTOR
        start = (2048 + 8192 + 2048 * (PARTITION[slot] - 2)) * SECTOR
        with open(self.disk, "r+b") as f:
            f.seek(start)
            f.write(image)
            os.fsync(f.fileno())
        self.releases[slot] = (version, kind)

    # -- power --------------------------------------------------------------------------------

    def power_on(self, kill=None):
        """Run the board until a slot's kernel powers it off: (slot, console). `kill`:
        ("saveenv", delay) or ("boot", at) kills QEMU once on the way, then powers on again."""
        texts = []
        while True:
            console = self.qemu.start()
            self.boots += 1
            if kill is not None:
                (kind, value), kill = kill, None
                try:
                    if kind == "saveenv":
                        console.expect(r"Saving Environment", 60)
                except (ConsoleTimeout, ConsoleClosed):
                    pass
                threading.Event().wait(value)  # the instant of the cut
                if self.qemu.proc is not None and self.qemu.proc.poll() is None:
                    self.qemu.stop()
                    self.kills += 1
                    texts.append(console.text())
                    continue
            try:
                self.qemu.proc.wait(timeout=120)  # the slot's kernel ends in poweroff
            except subprocess.TimeoutExpired:
                self.qemu.stop()
                raise RuntimeError(
                    "board did not boot a slot: %s" % console.text()[-800:]
                ) from None
            console.wait_closed(30)
            texts.append(console.text())
            self.qemu.stop()
            text = "".join(texts)
            self.torn += text.count("bad CRC")
            booted = re.findall(r"CHARGER-BOOTED .*charger\.slot=(\w)", text)
            if not booted:
                raise RuntimeError("no slot booted: %s" % text[-800:])
            return booted[-1], text

    # -- the agent ----------------------------------------------------------------------------

    def run_journey(self, version, kind, kill):
        """One job through the real journey; returns the result row."""
        new = self.boot.other_slot(self.booted)
        doc = {"id": "q-%s" % version, "url": "http://updates.example/%s.cub" % version,
               "version": version}  # fmt: skip
        job = parse_job(encode_payload(doc), {"model": "qemu"})
        self.now, self.kill, self.kind, self.statuses = T0, kill, kind, []
        self.version, self.console = version, ""
        started = time.monotonic()
        queue = list(self.journey.offer(job, self.now, self.booted, new, 0.5)[1])
        for _ in range(500):
            if not queue:
                state = self.journey.state
                if lc.is_terminal(state):
                    break
                queue = list(self.journey.tick(self.now, 0, False)[1])
                continue
            queue.extend(self.execute(queue.pop(0)))
        final = self.statuses[-1] if self.statuses else ("none", {})
        self.journey.finish(self.now)
        new_boots = self.console.count("charger: booting slot %s" % new)
        return {"version": version, "kind": kind, "kill": kill[0], "at": kill[1],
                "final": final[0], "cause": final[1].get("cause"), "reason": final[1].get("reason"),
                "booted": self.booted, "new_boots": new_boots,
                "seconds": round(time.monotonic() - started, 2)}  # fmt: skip

    def execute(self, action):
        """Run one action; returns the actions it leads to."""
        name, j = action[0], self.journey
        if name == "save_journal":
            self.journal = json.dumps(j.to_record())
        elif name == "report":
            if action[1] in lc.FINAL_STATUSES:
                self.statuses.append((action[1], action[2]))
        elif name in ("download", "verify", "install"):
            if name == "install":
                self.install(action[1], self.version, self.kind)
            event = {"download": lc.DOWNLOAD_OK, "verify": lc.SIGNATURE_OK}.get(name, lc.INSTALL_OK)
            return j.handle(event, self.now)[1]
        elif name == "record_baseline":
            j.set_baseline({"codes": [], "rate_per_hour": 0.0})
        elif name == "try_slot":
            self.boot.try_slot(action[1], 3)
        elif name in ("mark_good", "mark_bad"):
            getattr(self.boot, name)(action[1])
        elif name == "reboot":
            return self.reboot()
        elif name == "run_checks":
            good = self.releases[self.booted][1] == "good"
            results = dict((n, (good, "qemu")) for n in self.policy.required_checks)
            return j.check_results(results, self.now)[1]
        elif name == "wait":
            self.now = max(self.now + 1, action[1])
        return []

    def reboot(self):
        """The board goes down and comes back; the agent resumes from its journal."""
        kill, self.kill = self.kill, None
        self.booted, text = self.power_on(kill)
        self.console += text
        self.now += 30
        self.journey = Journey.from_record(json.loads(self.journal), self.policy)
        new = self.journey.data.get("new_slot")
        facts = {"reset": "unknown", "id": "boot-%d" % self.boots}
        if new:
            facts["attempts_left"] = self.boot.attempts_left(new)
        return list(self.journey.resume(self.booted, self.now, facts)[1])

    def close(self):
        self.qemu.stop()


def make_plan(seed, journeys):
    rng = random.Random(seed)
    plan = []
    for n in range(journeys):
        kill = rng.choice(KILLS)
        at = round(rng.uniform(0.0, 0.2 if kill == "saveenv" else BOOT_S), 3)
        plan.append({"n": n, "kind": "good" if n % 2 == 0 else "crash-on-boot",
                     "kill": (kill, at)})  # fmt: skip
    return plan


def run(journeys, seed, workdir=None, out=sys.stdout):
    workdir = workdir or tempfile.mkdtemp(prefix="charger-soak-qemu-")
    os.makedirs(workdir, exist_ok=True)
    load = os.getloadavg()[0]
    started = time.monotonic()
    charger = QemuCharger(workdir)
    results = []
    try:
        for step in make_plan(seed, journeys):
            old = charger.booted
            result = charger.run_journey("1.%d.0" % (step["n"] + 1), step["kind"], step["kill"])
            result["n"] = step["n"]
            expected = "Committed" if step["kind"] == "good" else "RolledBack"
            result["problems"] = [] if result["final"] == expected else [
                "ended %s, expected %s" % (result["final"], expected)]  # fmt: skip
            # The board still boots, into the slot it should; a healthy boot refills the
            # slot's attempts, as the daemon does (RAUC style: every boot counts down).
            want = charger.boot.other_slot(old) if result["final"] == "Committed" else old
            slot, _ = charger.power_on()
            charger.booted = slot
            if slot != want:
                result["problems"].append("booted %s after the journey, not %s" % (slot, want))
            charger.boot.mark_good(slot)
            results.append(result)
            out.write(line(result) + "\n")
            out.flush()
    finally:
        charger.close()
    with open(os.path.join(workdir, "soak-qemu.json"), "w") as f:
        json.dump({"seed": seed, "results": results}, f, indent=1)
    return results, summarise(results, charger, seed, time.monotonic() - started, load)


def line(r):
    return "#%-3d %-13s kill %-7s %5.2fs -> %-10s %-12s %d boot(s) of the new slot %5.1fs %s" % (
        r["n"], r["kind"], r["kill"], r["at"], r["final"], r["cause"] or "", r["new_boots"],
        r["seconds"], "; ".join(r["problems"]) or "ok",
    )  # fmt: skip


def summarise(results, charger, seed, wall_s, load):
    out = ["", "soak on real U-Boot (QEMU): seed %d, %d journeys, %.0f s wall, load %.2f at start"
           % (seed, len(results), wall_s, load),
           "QEMU kills %d, env torn by a kill (U-Boot: bad CRC, default env) %d"
           % (charger.kills, charger.torn), "",
           "| kill | release | journeys | ended Committed | ended RolledBack |",
           "|---|---|---|---|---|"]  # fmt: skip
    for kill in KILLS:
        for kind in ("good", "crash-on-boot"):
            rows = [r for r in results if r["kill"] == kill and r["kind"] == kind]
            if rows:
                out.append("| %s | %s | %d | %d | %d |" % (
                    kill, kind, len(rows), sum(r["final"] == "Committed" for r in rows),
                    sum(r["final"] == "RolledBack" for r in rows)))  # fmt: skip
    crash = [r for r in results if r["kind"] != "good"]
    if crash:
        out.append("crash-on-boot: the new slot booted at most %d times before the fallback"
                   % max(r["new_boots"] for r in crash))  # fmt: skip
    if results:
        times = [r["seconds"] for r in results]
        out.append("time per journey: median %.1f s, max %.1f s" % (statistics.median(times),
                                                                    max(times)))  # fmt: skip
    out.append("journeys with problems: %d of %d" % (len([r for r in results if r["problems"]]),
                                                      len(results)))  # fmt: skip
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hil.soak_qemu",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--journeys", type=int, default=30)
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--workdir")
    args = p.parse_args(argv)
    if MISSING:
        print("QEMU rig unavailable: %s (make qemu-deps)" % "; ".join(MISSING))
        return 2
    results, summary = run(args.journeys, args.seed, args.workdir)
    print(summary)
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
