"""The scenario catalogue through a bench rig file, as an OEM runs it on a real bench:
`pytest hil/scenarios --rig bench.toml`.

The "bench" here is a virtual board whose console, LCUS relay and EV simulator sit on ptys
(the only part that is simulated: no USB hardware exists in CI); the rig file names those
ports, fixed backend ports the board was provisioned with, the OEM's release builder and
its test release key, exactly as for hardware. The board is not reset between scenarios.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from agent.trust import crypto
from hil.release import ReleaseKit
from hil.services.mosquitto import free_port
from hil.virtual.rig import HW, MODEL, provision

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS = ("good_update or bad_signature or crash_looping or power_cut_during_payload "
             "or refuse-session")  # fmt: skip

# The OEM's image builder; here the virtual board's (placeholders filled in by the rig).
BUILD = ("%s -m hil.virtual.image --version {version} --defects {defects} "
         "--pad-bytes {pad_bytes} --out {out}")  # fmt: skip
RIG = """\
name = "bench-in-ci"

[board]
kind = "bench"
device_id = "bench-01"
model = "{model}"
hardware_revision = "{hw}"

[console]
url = "{console}"
boot_banner = '\\[rom\\] booting slot'

[power]
kind = "lcus-relay"
url = "{relay}"
channel = 1

[evsim]
url = "{evsim}"

[backend]
listen = "127.0.0.1"
mqtt_port = {mqtt}
ocpp_port = {ocpp}
images_port = {images}

[releases]
build = "{build}"
release_key = "oem/release.key"
"""


def test_catalogue_runs_on_a_bench_rig_file(tmp_path):
    kit = ReleaseKit(str(tmp_path / "oem"), MODEL, HW)  # the OEM's test root and key
    with open(str(tmp_path / "oem" / "release.key"), "wb") as f:
        f.write(crypto.private_pem(kit.release_key))
    ports = {"mqtt": free_port(), "ocpp": free_port(), "images": free_port()}
    board = provision(str(tmp_path / "board"), "bench-01", kit, "1.0.0", ports["mqtt"],
                      ports["ocpp"], trial_window_s=30, watchdog_s=10.0)  # fmt: skip
    try:
        rig = tmp_path / "bench.toml"
        rig.write_text(RIG.format(model=MODEL, hw=HW, console=board.console_path,
                                  relay=board.relay.port, evsim=board.ev.port,
                                  build=BUILD % sys.executable, **ports))  # fmt: skip
        report = tmp_path / "report"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "hil/scenarios/test_catalogue.py", "--rig",
             str(rig), "-k", SCENARIOS, "--hil-report", str(report), "-p", "no:cacheprovider",
             "-q"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        board.close()
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    suite = ET.parse(str(report / "junit.xml")).getroot()
    assert int(suite.get("tests")) == 5 and suite.get("failures") == "0"
    assert (report / "report.html").exists()
