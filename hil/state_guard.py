"""An autouse pytest fixture for both suites (tests/ and the HIL catalogue in hil/scenarios):
no test may write the charger's real state dir. Each conftest imports it."""

import os
import shutil

import pytest

from agent.state.statedir import DEFAULT_DIR


@pytest.fixture(autouse=True)
def real_state_dir_untouched():
    # A config without [state] dir means /var/lib/charger-update: shared by every checkout
    # and run on this machine, so tests leak state into each other through it. Only checked
    # where the directory does not exist already (a CI machine, a clean dev box).
    existed = os.path.exists(DEFAULT_DIR)
    yield
    if not existed and os.path.exists(DEFAULT_DIR):
        shutil.rmtree(DEFAULT_DIR, ignore_errors=True)
        pytest.fail("the test wrote %s (or one running beside it on another pytest-xdist "
                    "worker: run it alone, TEST_WORKERS=0): give its agent config a [state] dir"
                    % DEFAULT_DIR)  # fmt: skip
