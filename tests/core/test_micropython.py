"""agent/core and its trace scenarios under MicroPython 1.27 (WebAssembly port, in Node.js).

The core promises to run on MicroPython; this proves it with the same scenario functions
pytest runs, so a CPython-only construct in agent/core fails here.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(ROOT, "tests", "micropython", "run_core.mjs")
MP_DIR = os.path.join(ROOT, ".cache", "micropython")
PACKAGE = "@micropython/micropython-webassembly-pyscript@1.27.0"
INSTALLED = os.path.join(MP_DIR, "node_modules", "@micropython", "micropython-webassembly-pyscript")

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None, reason="node is not installed: cannot run MicroPython (wasm)"
)


@pytest.fixture(scope="module")
def micropython():
    """The MicroPython package directory, installed with npm like `make test` does."""
    if not os.path.isdir(INSTALLED):
        subprocess.run(
            ["npm", "install", "--no-save", "--prefix", MP_DIR, PACKAGE],
            check=True,
            timeout=300,
        )
    return MP_DIR


def run_core(micropython, *modules):
    args = []
    for module in modules:
        args += ["--module", module]
    return subprocess.run(
        ["node", RUNNER, "--root", ROOT, "--mp", micropython] + args,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_core_scenarios_and_portable_checks_pass_under_micropython(micropython):
    from tests.core import portable, scenarios

    result = run_core(micropython, "tests/core/scenarios.py", "tests/core/portable.py")
    sys.stdout.write(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "micropython micropython 1.27" in result.stdout
    total = len(scenarios.SCENARIOS) + len(portable.CHECKS)
    assert "RESULT %d passed 0 failed" % total in result.stdout


def test_runner_fails_when_a_scenario_fails(micropython, tmp_path):
    module = tmp_path / "broken.py"
    module.write_text(
        "from agent.core import lifecycle\n"
        "def scenario_wrong():\n"
        "    if lifecycle.next_state(lifecycle.IDLE, lifecycle.JOB_ACCEPTED) != 'x':\n"
        "        raise AssertionError('trace differs')\n"
        "def run_all():\n"
        "    try:\n"
        "        scenario_wrong()\n"
        "        return ['scenario_wrong'], []\n"
        "    except AssertionError as e:\n"
        "        return [], [('scenario_wrong', str(e))]\n"
    )
    result = run_core(micropython, str(module))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL scenario_wrong trace differs" in result.stdout


def test_cpython_only_construct_in_core_is_caught(micropython, tmp_path):
    # A module using typing (absent on MicroPython) makes the runner fail, not pass quietly.
    module = tmp_path / "typed.py"
    module.write_text("import typing\ndef run_all():\n    return ['x'], []\n")
    result = run_core(micropython, str(module))
    assert result.returncode == 2, result.stdout + result.stderr


def test_front_end_engine_options_pass_under_micropython(micropython):
    from tests.core import scenarios_frontend

    result = run_core(micropython, "tests/core/scenarios_frontend.py")
    sys.stdout.write(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT %d passed 0 failed" % len(scenarios_frontend.SCENARIOS) in result.stdout
