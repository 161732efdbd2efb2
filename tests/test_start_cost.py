"""What each command imports (issue 12): start-up cost and idle memory come from imports, so
the heavy packages are loaded only by the code paths that use them. Checked in a fresh
interpreter per case (this test process has everything imported already); `make bench`
times the same commands."""

import json
import os
import subprocess
import sys
import sysconfig

from tests.bench import make_bundle
from tests.bench_process import IDLE_BOARD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHED = (
    "cryptography", "cryptography.x509", "cryptography.hazmat.primitives.serialization",
    "cryptography.hazmat.primitives.asymmetric.ec", "cryptography.hazmat.primitives.asymmetric.rsa",
    "zstandard", "paho", "http.client", "email", "urllib.request", "urllib.parse", "shutil",
    "agent.transfer.installer",
    "agent.transfer.delta", "agent.bundle.reader", "agent.components", "agent.trust.manufacturer",
    "bootloader_iface.grub", "bootloader_iface.uboot_bootcount", "bootloader_iface.command",
)  # fmt: skip

PROBE = """
import sys
before = set(sys.modules)  # what the interpreter itself loaded
import json
sys.argv = ["charger-update"] + json.loads(sys.argv[1])
from agent import cli
try:
    if sys.argv[-1] == "BUILD-DAEMON":
        from agent import config
        from agent.commands.run import build
        build(config.load(sys.argv[2]))
    else:
        cli.main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED " + json.dumps([m for m in json.loads(sys.argv[0])
                              if m in sys.modules and m not in before]))
"""


def loaded(argv, cwd):
    script = PROBE.replace("json.loads(sys.argv[0])", repr(list(WATCHED)))
    # -S: no site, so no editable-install hook (it imports urllib.parse and more); the venv's
    # packages and this tree come in by PYTHONPATH, as a wheel install would have them.
    paths = [ROOT, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    out = subprocess.run(
        [sys.executable, "-S", "-c", script, json.dumps(argv)],
        cwd=cwd, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(paths)),
    )  # fmt: skip
    lines = [x for x in out.stdout.splitlines() if x.startswith("LOADED ")]
    assert lines, out.stdout + out.stderr
    return set(json.loads(lines[-1][len("LOADED ") :]))


def test_help_imports_no_crypto_bundle_or_network_code(tmp_path):
    assert loaded(["--help"], tmp_path) == set()


def test_a_local_install_imports_only_what_verifying_and_writing_need(tmp_path):
    payload = tmp_path / "small.bin"
    payload.write_bytes(os.urandom(1 << 16))
    bundle, config_path = make_bundle(str(tmp_path), str(payload), str(tmp_path / "slot.img"))
    got = loaded(["--config", config_path, "install", bundle], tmp_path)
    assert {"cryptography", "agent.transfer.installer", "agent.bundle.reader"} <= got  # it ran
    # X.509 (OCPP signatures), key-file parsing, ECDSA and RSA for an Ed25519 release, zstd
    # for a format-1 bundle, MQTT, HTTP and URLs, MCU drivers, other bootloaders.
    unused = {
        "cryptography.x509", "cryptography.hazmat.primitives.serialization", "paho",
        "cryptography.hazmat.primitives.asymmetric.ec",
        "cryptography.hazmat.primitives.asymmetric.rsa", "zstandard",
        "http.client", "email", "urllib.request", "urllib.parse", "shutil", "agent.components",
        "agent.trust.manufacturer",
        "bootloader_iface.grub", "bootloader_iface.uboot_bootcount", "bootloader_iface.command",
    }  # fmt: skip
    assert got & unused == set()


def test_an_idle_daemon_carries_no_crypto_bundle_or_transfer_code(tmp_path):
    payload = tmp_path / "small.bin"
    payload.write_bytes(b"x")
    _, config_path = make_bundle(str(tmp_path), str(payload), str(tmp_path / "slot.img"))
    with open(config_path, "a") as f:
        f.write(IDLE_BOARD % {"port": 1, "dir": tmp_path})
    got = loaded(["--config", config_path, config_path, "BUILD-DAEMON"], tmp_path)
    assert "paho" in got  # the daemon was built (its MQTT adapter is loaded)
    # paho's own imports (urllib.request brings tempfile and so shutil)
    paho_own = {"paho", "http.client", "email", "urllib.request", "urllib.parse", "shutil"}
    assert got - paho_own == set(), got
