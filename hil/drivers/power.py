"""Power for a bench board through an LCUS-type USB serial relay (CH340, 9600 8N1).

Invariant: every switch is one complete 4-byte frame `A0 <channel> <state> <checksum>`
(checksum = sum of the first three bytes mod 256), written and flushed before the call
returns; the driver never sends a partial frame or a channel outside 1..8. These boards do
not acknowledge, so the driver remembers what it last commanded (`state`), and `cycle` keeps
the supply off for a minimum time so the board's capacitors really drain.

    channel 1 on : A0 01 01 A2        channel 1 off: A0 01 00 A1
    channel 2 on : A0 02 01 A3        channel 2 off: A0 02 00 A2
"""

import time

import serial

from agent.core.errors import ConfigError

FRAME_START = 0xA0
MAX_CHANNEL = 8


def frame(channel, on):
    """The 4 bytes that switch `channel` (1..8) on or off."""
    if not 1 <= channel <= MAX_CHANNEL:
        raise ConfigError("relay channel %r is outside 1..%d" % (channel, MAX_CHANNEL))
    state = 1 if on else 0
    return bytes((FRAME_START, channel, state, (FRAME_START + channel + state) & 0xFF))


def parse_frame(data):
    """(channel, on) from a 4-byte frame; ValueError when it is not a valid one."""
    if len(data) != 4 or data[0] != FRAME_START:
        raise ValueError("not a relay frame: %s" % data.hex(" "))
    channel, state, checksum = data[1], data[2], data[3]
    if (FRAME_START + channel + state) & 0xFF != checksum:
        raise ValueError("bad checksum in relay frame %s" % data.hex(" "))
    if not 1 <= channel <= MAX_CHANNEL or state not in (0, 1):
        raise ValueError("channel or state out of range in %s" % data.hex(" "))
    return channel, state == 1


class LcusRelay:
    OFF_TIME_S = 2.0  # long enough for a controller's supply rails to collapse

    def __init__(self, url, channel=1, baudrate=9600, sleep=time.sleep, port=None):
        frame(channel, False)  # validates the channel before any port is opened
        self.url = url
        self.channel = channel
        self._sleep = sleep
        self._port = port or serial.serial_for_url(url, baudrate=baudrate, timeout=1.0)
        self.state = None  # unknown until the first command: the relay does not report it

    def on(self):
        self._switch(True)

    def off(self):
        self._switch(False)

    def cycle(self, off_time=None):
        """Off, wait `off_time` (a real delay for the hardware, not synchronisation), on."""
        self.off()
        self._sleep(self.OFF_TIME_S if off_time is None else off_time)
        self.on()

    def close(self):
        self._port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _switch(self, on):
        self._port.write(frame(self.channel, on))
        self._port.flush()
        self.state = on
