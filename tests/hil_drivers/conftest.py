"""Fixtures: simulated bench devices on pty pairs, closed after each test."""

import pytest

from hil.drivers.sim_devices import EvSimDevice, RelaySim


@pytest.fixture
def relay_sim():
    with RelaySim(channels=4) as sim:
        yield sim


@pytest.fixture
def evsim_device():
    with EvSimDevice() as sim:
        yield sim
