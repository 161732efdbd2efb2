"""The test broker itself (hil/services/mosquitto.py) and the CSMS (hil/services/csms.py)
under several test workers at once: a port one picked that another process bound first is
picked again, and a port that answers is taken only if our mosquitto is the one listening."""

import socket

import pytest

from hil.services.mosquitto import Mosquitto


@pytest.fixture
def squatter():
    """A port another process (another xdist worker's server) listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_a_picked_port_taken_meanwhile_is_picked_again(tmp_path, squatter):
    broker = Mosquitto(str(tmp_path))
    broker.port = squatter  # as if it had been taken between free_port() and the start
    broker._write_config(0)
    try:
        broker.start()
        assert broker.port != squatter
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5):
            pass
    finally:
        broker.stop()


def test_a_given_port_taken_by_another_process_is_an_error_not_its_server(tmp_path, squatter):
    broker = Mosquitto(str(tmp_path), port=squatter)
    with pytest.raises(RuntimeError, match="another process listens on 127.0.0.1:%d|in use"
                       % squatter):  # fmt: skip
        broker.start()
    assert broker.proc is None


def test_the_csms_repicks_a_port_taken_meanwhile_and_keeps_a_given_one(squatter):
    from agent.station.ocpp_probe import probe
    from hil.services.csms import Csms

    server = Csms()
    server.port = squatter  # taken between free_port() and the start
    try:
        server.start()
        assert server.port != squatter and str(server.port) in server.url
        probe(server.url, "cp-1", timeout=5)  # a station's connection reaches this CSMS
    finally:
        server.stop()
    with pytest.raises(RuntimeError, match="did not start on port %d" % squatter):
        Csms(port=squatter).start()
