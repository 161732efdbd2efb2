"""The bundle-trust core (agent/core) runs unchanged under MicroPython 1.27 (WebAssembly port).

Needs node and the npm package @micropython/micropython-webassembly-pyscript, found in
$MICROPYTHON_WASM_DIR, .cache/micropython (installed by `make test`) or ./node_modules.
"""

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from agent.commands.root import root_fields
from agent.core.envelope import MANIFEST_TYPE, ROOT_TYPE, Envelope
from agent.trust import crypto
from tests.bundle.factory import make_keys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PKG = "@micropython/micropython-webassembly-pyscript"

RUNNER = """
import { loadMicroPython } from "%(module)s";
import fs from "fs";
const mp = await loadMicroPython({ heapsize: 16 * 1024 * 1024,
  stdout: (d) => process.stdout.write(d + "\\n"), stderr: (d) => process.stderr.write(d + "\\n") });
mp.FS.mkdir("/agent"); mp.FS.mkdir("/agent/core");
mp.FS.writeFile("/agent/__init__.py", "");
for (const f of fs.readdirSync("%(core)s")) if (f.endsWith(".py"))
  mp.FS.writeFile("/agent/core/" + f, fs.readFileSync("%(core)s/" + f));
mp.runPython("import sys\\nsys.path.insert(0, '/')\\n" + fs.readFileSync(process.argv[2], "utf8"));
"""


def find_module():
    bases = (
        os.environ.get("MICROPYTHON_WASM_DIR", ""),
        os.path.join(REPO, ".cache", "micropython", "node_modules"),  # where `make test` puts it
        os.path.join(REPO, "node_modules"),
    )
    for base in bases:
        path = os.path.join(base, PKG, "micropython.mjs") if base else ""
        if path and os.path.exists(path):
            return path
    return None


def fake_envelope(payload_type, payload, key):
    env = Envelope(payload_type, payload, [])
    sig = hashlib.sha256(env.signed_bytes + crypto.public_der(key)).digest()
    return env.with_signature(crypto.keyid(key), sig).encode()


def test_core_runs_on_micropython(tmp_path):
    module = find_module()
    if not module or not shutil.which("node"):
        pytest.skip("node or %s not installed" % PKG)
    rk, rel = make_keys(1, tag="mpy-root")[0], make_keys(1, tag="mpy-rel")[0]
    root = json.dumps(root_fields([rk], [rel], 1, 1, 1, 4102444800)).encode()
    man = json.dumps({
        "format": 1, "version": "1.2.0-rc.1", "security_version": 2,
        "created": "2026-01-01T00:00:00Z", "expires": "2030-01-01T00:00:00Z",
        "compatible": [{"model": "ACME", "hardware_revisions": ["b"]}],
        "payloads": [{"name": "rootfs", "slot_class": "rootfs", "size": 3, "sha256": "ab" * 32}],
    }).encode()  # fmt: skip
    script = tmp_path / "check.py"
    script.write_text(
        "ROOT = %r\nMAN = %r\nBAD = %r\n"
        % (
            fake_envelope(ROOT_TYPE, root, rk),
            fake_envelope(MANIFEST_TYPE, man, rel),
            fake_envelope(MANIFEST_TYPE, man, rk),
        )
        + open(os.path.join(HERE, "mpy_core_check.py")).read()
    )
    runner = tmp_path / "run.mjs"
    runner.write_text(RUNNER % {"module": module, "core": os.path.join(REPO, "agent", "core")})
    done = subprocess.run(
        ["node", str(runner), str(script)], capture_output=True, text=True, timeout=120
    )
    tail = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if len(line) < 300)
    assert done.returncode == 0 and "MICROPYTHON CORE OK micropython" in done.stdout, tail
