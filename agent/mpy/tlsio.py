"""The TCP socket under the MQTT link's TLS socket (agent/mpy/tls.py `wrap`): a module of its
own because the TLS socket keeps this stream, and with it this module's globals, for the whole
connection, while tls.py leaves the heap after the handshake.
"""

import io
import select
import time

ETIMEDOUT = 110
POLL, CLOSE = 3, 4  # MicroPython's stream ioctl requests (py/stream.h)


class Bounded(io.IOBase):
    """The TCP socket under a TLS socket, as mbedtls reads and writes it. During the
    handshake (`until` set) an operation waits for the socket, at most `timeout_s` of
    silence, and fails with ETIMEDOUT once `until` has passed, however slowly the peer
    trickles; afterwards it passes through, not blocking, as umqtt uses the socket. A socket
    error is returned as its negative errno, which mbedtls ends the operation with and the
    TLS socket raises: no exception is raised through mbedtls's C code."""

    def __init__(self, sock, timeout_s, handshake_s):
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.timeout_ms = int(timeout_s * 1000)
        self.until = time.ticks_add(time.ticks_ms(), int(handshake_s * 1000))
        self.timed_out = False

    def readinto(self, buf):
        try:
            if self.until is None:
                return self.sock.readinto(buf)  # no bound method made: called in place
            return self._handshake(buf, select.POLLIN)
        except OSError as e:
            return -e.errno

    def write(self, buf):
        try:
            if self.until is None:
                return self.sock.write(buf)
            return self._handshake(buf, select.POLLOUT)
        except OSError as e:
            return -e.errno

    def _handshake(self, buf, events):
        while True:
            left = time.ticks_diff(self.until, time.ticks_ms())
            if left <= 0:
                self.timed_out = True
                return -ETIMEDOUT  # mbedtls ends the handshake with it
            got = self.sock.readinto(buf) if events == select.POLLIN else self.sock.write(buf)
            if got is not None:
                return got
            self.poller.modify(self.sock, events)
            if not self.poller.poll(min(left, self.timeout_ms)) and left > self.timeout_ms:
                self.timed_out = True
                return -ETIMEDOUT  # silent for timeout_s

    def ioctl(self, request, arg):
        # umqtt polls the TLS socket at every check: ipoll reuses its result (no list made).
        if request == POLL:
            self.poller.modify(self.sock, arg)
            for _, ready in self.poller.ipoll(0):
                return ready & (arg | select.POLLERR | select.POLLHUP)
            return 0
        if request == CLOSE:
            self.sock.close()
        return 0
