"""The board's uplink (its modem, in the charger's world): local ports forwarded to the backend.

The agent and the charging stack reach the outside only through these ports, so a release
that breaks the uplink (`no-backend`) really cuts the board off, as a bad modem driver would.
"""

import socket
import threading


def _pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def forward(listen_port, target_host, target_port):
    """Accept on 127.0.0.1:listen_port and relay each connection to the target."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(16)

    def accept_loop():
        while True:
            client, _ = server.accept()
            try:
                upstream = socket.create_connection((target_host, target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return server
