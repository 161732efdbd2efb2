"""MCUboot over SMP (the mcumgr protocol) on a UART, through the `smpclient` library.

smpclient does the SMP framing (CBOR, base64 console lines, CRC16, fragmentation sized from
the device's MCUmgr parameters); this adapter adds what an update needs: upload the image to
the secondary slot, check the slot's hash is the image's, `image test` it, reset, wait for
the MCU to come back running it, and later `image confirm` it (commit) or reset without
confirming (MCUboot swaps the old image back by itself).

Invariant: every call either did what it says or raises McubootError (transient: the line
or the MCU) naming the SMP step; an upload that broke is started again from offset 0.
"""

import asyncio
import logging
import time

from agent.core.errors import Transient

log = logging.getLogger("charger-update")


class McubootError(Transient):
    reason = "mcu-smp"


def _smp():
    try:
        from smpclient import SMPClient
        from smpclient.generics import error, success
        from smpclient.requests.image_management import ImageStatesRead, ImageStatesWrite
        from smpclient.requests.os_management import ResetWrite
        from smpclient.transport.serial import SMPSerialTransport
    except ImportError as e:  # pragma: no cover - smpclient needs Python >= 3.10
        raise McubootError(
            "the MCUboot driver needs smpclient: %s" % e,
            hint="pip install 'charger-update-agent[mcuboot]'",
        ) from None
    return SMPClient, SMPSerialTransport, ImageStatesRead, ImageStatesWrite, ResetWrite, (
        error, success)  # fmt: skip


def _short(error):
    """smpclient's timeout messages carry the whole request, an upload chunk's data too."""
    text = "%s: %s" % (type(error).__name__, error)
    return text if len(text) <= 160 else text[:160] + "..."


def image_hash(image):
    """The SHA-256 hash TLV of an MCUboot image: what `image list` reports for it."""
    import hashlib
    import struct

    image = bytes(image)
    if len(image) < 32 or struct.unpack("<L", image[:4])[0] != 0x96F3B83D:
        raise McubootError("not an MCUboot image (bad header magic)")
    hdr_size, _, img_size = struct.unpack("<HHL", image[8:16])
    off = hdr_size + img_size
    magic, total = struct.unpack("<HH", image[off : off + 4])
    pos, end = off + 4, off + total
    while magic == 0x6907 and pos + 4 <= end:
        kind, length = struct.unpack("<BxH", image[pos : pos + 4])
        if kind == 0x10 and length == 32:
            digest = image[pos + 4 : pos + 36]
            if hashlib.sha256(image[:off]).digest() != digest:
                raise McubootError("MCUboot image hash does not match its contents")
            return digest
        pos += 4 + length
    raise McubootError("MCUboot image has no SHA256 TLV")


class Mcuboot:
    """port: device path or pyserial URL of the MCU's UART."""

    def __init__(self, port, baudrate=115200, timeout=2.5, retries=2, boot_timeout=10.0,
                 clock=time.monotonic):  # fmt: skip
        self.port, self.baudrate, self.timeout = port, baudrate, timeout
        self.retries, self.boot_timeout, self.clock = retries, boot_timeout, clock
        self.tick = None  # the agent's sign of life, between attempts and while waiting

    # -- one SMP session per call ------------------------------------------------------------

    def _session(self, work, what):
        SMPClient, Transport = _smp()[:2]

        async def run():
            client = SMPClient(Transport(baudrate=self.baudrate, exclusive=True), self.port,
                               timeout_s=self.timeout)  # fmt: skip
            try:
                # connect() asks the MCUmgr parameters: a reply garbled on the line raises
                # with the port open, and an exclusive port left open locks out the retry.
                await client.connect(self.timeout)
                return await work(client)
            finally:
                await client.disconnect()

        last = None
        for _ in range(self.retries + 1):
            if self.tick:
                self.tick()
            try:
                return asyncio.run(run())
            except McubootError:
                raise
            except Exception as e:  # smpclient raises TimeoutError, SMP*, serial errors
                last = _short(e)
                log.warning("MCUboot %s on %s failed (%s); retrying", what, self.port, last)
        raise McubootError("MCUboot %s on %s failed: %s" % (what, self.port, last),
                           hint="check the MCU's UART and that its SMP server runs")  # fmt: skip

    async def _request(self, client, request):
        _, _, _, _, _, (error, success) = _smp()
        response = await client.request(request)
        if error(response):
            raise McubootError("MCU refused %s: %s" % (type(request).__name__, response))
        return response

    # -- the commands ------------------------------------------------------------------------

    def images(self):
        """[{"slot", "version", "hash" (hex), "active", "confirmed", "pending"}]."""
        ImageStatesRead = _smp()[2]

        async def work(client):
            return (await self._request(client, ImageStatesRead())).images

        found = self._session(work, "image list")
        return [{"slot": i.slot, "version": i.version, "hash": (i.hash or b"").hex(),
                 "active": bool(i.active), "confirmed": bool(i.confirmed),
                 "pending": bool(i.pending)} for i in found]  # fmt: skip

    def running(self):
        """(version, confirmed) of the image the MCU runs, or None."""
        for image in self.images():
            if image["active"]:
                return image["version"], image["confirmed"]
        return None

    def upload(self, image, progress=None):
        image = bytes(image)

        async def work(client):
            async for offset in client.upload(image, 0):
                if progress:
                    progress("write", offset, len(image))

        self._session(work, "upload")
        digest = image_hash(image).hex()
        if not any(i["slot"] == 1 and i["hash"] == digest for i in self.images()):
            raise McubootError("the secondary slot does not hold the uploaded image")

    def test(self, digest):
        ImageStatesWrite = _smp()[3]

        async def work(client):
            await self._request(client, ImageStatesWrite(hash=bytes(digest), confirm=False))

        self._session(work, "image test")

    def confirm(self):
        """Make the running image permanent (MCUboot will not swap it back)."""
        ImageStatesWrite = _smp()[3]

        async def work(client):
            await self._request(client, ImageStatesWrite(confirm=True))

        self._session(work, "image confirm")

    def reset(self):
        ResetWrite = _smp()[4]

        async def work(client):
            await self._request(client, ResetWrite())

        self._session(work, "reset")

    def wait_running(self, version):
        """After a reset: poll until the MCU answers running `version` (bounded)."""
        deadline = self.clock() + self.boot_timeout
        seen = None
        while self.clock() < deadline:
            if self.tick:
                self.tick()
            try:
                seen = self.running()
            except McubootError:
                seen = None
            if seen and seen[0] == version:
                return seen
        raise McubootError("MCU did not come back running %s (last seen: %s)" % (version, seen))

    # -- the whole job ----------------------------------------------------------------------

    def flash(self, image, version, progress=None):
        """Upload to the secondary slot, mark it for test, reset into it; unconfirmed."""
        self.upload(image, progress)
        self.test(image_hash(image))
        self.reset()
        return self.wait_running(version)
