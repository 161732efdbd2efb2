"""A fault-injecting TCP proxy (127.0.0.1 unless a bench rig says otherwise): the network
between a board and its image server.

Invariant: with no fault armed it relays bytes unchanged in both directions, towards the
client at most `rate` bytes/s when given (a slow mobile link; small socket buffers keep the
data on the link instead of in kernel queues, so a cut lands mid-transfer). `cut_after(n)`
arms one cut: the next connection that carries n more bytes towards the client is closed
abruptly (a dropped mobile link), and `cuts` counts cuts done so tests can wait for one.
Used because `tc netem` is unavailable here (see FACTS.md), and it works on any machine.
"""

import socket
import threading
import time

BUFFER = 64 * 1024


class FaultProxy:
    def __init__(self, target_host, target_port, rate=0, host="127.0.0.1", port=0):
        self.target = (target_host, target_port)
        self.rate = rate
        self.host = host
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((host, port))
        self.server.listen(32)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Condition()
        self.armed = None  # bytes still allowed before the cut
        self.cuts = 0
        self.connections = 0
        self._stopped = False

    def start(self):
        threading.Thread(target=self._accept, name="faultproxy", daemon=True).start()
        return self

    def stop(self):
        self._stopped = True
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() so the port is freed
        except OSError:
            pass
        self.server.close()

    def cut_after(self, nbytes):
        with self.lock:
            self.armed = nbytes

    def wait_cut(self, timeout):
        with self.lock:
            return self.lock.wait_for(lambda: self.cuts > 0, timeout)

    def _accept(self):
        while not self._stopped:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._relay, args=(upstream, client, True), daemon=True).start()
            threading.Thread(
                target=self._relay, args=(client, upstream, False), daemon=True
            ).start()

    def _relay(self, src, dst, downstream):
        started, sent = time.monotonic(), 0
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if downstream and self._cut_now(len(data)):
                    break
                rate = self.rate if downstream else 0
                # A slow link delivers in pieces of a tenth of a second's worth, so a client
                # sees bytes trickle in rather than a burst and a pause.
                piece = max(64, rate // 10) if rate else len(data)
                for at in range(0, len(data), piece):
                    dst.sendall(data[at : at + piece])
                    sent += min(piece, len(data) - at)
                    if rate:
                        # Bandwidth of the simulated link (pacing, not synchronisation).
                        ahead = sent / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _cut_now(self, n):
        with self.lock:
            if self.armed is None:
                return False
            self.armed -= n
            if self.armed > 0:
                return False
            self.armed = None
            self.cuts += 1
            self.lock.notify_all()
            return True
