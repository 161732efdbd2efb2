"""An MCU with MCUboot (swap with revert) whose application serves SMP over its UART.

Two slots of one image: the primary runs, uploads go to the secondary. `image test HASH`
marks the secondary pending; at the next reset MCUboot swaps it in on trial. If the running
trial image is not confirmed (`image confirm`, or `image test --confirm`) before the reset
after that, MCUboot swaps the old one back: the revert. A confirmed image stays. A slot
whose hash TLV does not match its contents (a torn upload) is never swapped in.

The application answers SMP frames (SMP over console: base64 lines starting 06 09 / 04 14,
decoded and encoded with the `smp` package) for image state read/write, upload, erase, OS
echo, reset and MCUmgr parameters; other lines go to the MCU application of
hil/emulators/mcu_image.py (VERSION, CONTACTOR ...), which is the image's body.

The swap itself is modelled as atomic (MCUboot's swap status area makes a real one resumable
after a power cut; this emulator does not model a cut inside the swap).
"""

import hashlib

from smp import header as smphdr
from smp import image_management as smpimg
from smp import os_management as smpos
from smp import packet as smppacket
from smp.error import MGMT_ERR, ErrorV1

from hil.emulators import mcu_image, mcuboot_image
from hil.emulators.base import McuOnPty

BUF_SIZE = 2048  # the reassembly buffer MCUmgr parameters report (CONFIG_MCUMGR_..._NETBUF_SIZE)
SLOT_SIZE = 512 * 1024
ERASE_S = 0.022  # per 2 KiB page (realtime only)
PROGRAM_S = 82e-6  # per 8 bytes


class Slot:
    def __init__(self, data=b""):
        self.data = bytearray(data)

    def info(self):
        """(version, hash) if the slot holds a valid image, else None."""
        try:
            version, digest, _ = mcuboot_image.inspect(self.data)
        except ValueError:
            return None
        return version, digest


class McubootDevice(McuOnPty):
    def __init__(self, primary=None, lines_dir=None, realtime=False):
        McuOnPty.__init__(self, lines_dir, realtime)
        self.primary = Slot(primary or b"")
        self.secondary = Slot()
        self.pending = None  # None | "test" | "permanent"
        self.image_ok = True  # the primary image is confirmed
        self.trial = False  # the primary runs a test image; the secondary holds the old one
        self.upload = None  # {"len", "sha"} of the upload in progress
        self.app = None

    # -- MCUboot at reset --------------------------------------------------------------------

    def boot_mode(self):
        return "app" if self.primary.info() else "recovery"

    def run(self):
        self.upload = None  # RAM: an upload a reset or power cut interrupted is forgotten
        self._mcuboot()
        info = self.primary.info()
        self._publish(("booted", info[0] if info else None))  # the swap decision is made
        self.app = None
        if info:
            _, _, body = mcuboot_image.inspect(self.primary.data)
            parsed = mcu_image.parse(body)
            self.app = mcu_image.App(parsed) if parsed else None
            if parsed and "no-answer" in parsed["defects"]:
                # The application (and the SMP server in it) hangs at start: only a reset
                # (NRST, a watchdog, a power cut) gets MCUboot to run again and revert.
                self._publish(("hang", info[0]))
                return
        self._serve()

    def _mcuboot(self):
        if self.pending and self.secondary.info():
            self._swap()
            self.trial = self.pending == "test"
            self.image_ok = not self.trial
            self._publish(("swap", self.pending, self.primary.info()[0]))
        elif self.trial and not self.image_ok:
            self._swap()
            self.trial, self.image_ok = False, True
            self._publish(("revert", self.primary.info()[0]))
        self.pending = None

    def _swap(self):
        self.primary, self.secondary = self.secondary, self.primary

    # -- the UART ----------------------------------------------------------------------------

    def _serve(self):
        line = b""
        while True:
            line += self._get(1, None)
            if not line.endswith(b"\n"):
                continue
            if line[:2] == smppacket.START_DELIMITER:
                frame = self._frame(line)
                if frame is not None:
                    self._answer(frame)
            elif self.app is not None:
                reply = self.app.reply(line.decode("ascii", "replace").strip())
                if reply is not None:
                    self.send(reply.encode() + b"\n")
            line = b""

    def _frame(self, first):
        """Collect the continuation lines of one SMP frame; None on a bad frame (dropped,
        as Zephyr's console transport drops it)."""
        decoder = smppacket.decode()
        next(decoder)
        packet = first
        while True:
            try:
                decoder.send(packet)
            except StopIteration as done:
                return done.value
            except Exception:
                self._publish(("bad-frame",))
                return None
            packet = b""
            while not packet.endswith(b"\n"):
                packet += self._get(1, None)

    def _answer(self, frame):
        try:
            h = smphdr.Header.loads(frame[: smphdr.Header.SIZE])
        except Exception:
            return
        key = (int(h.group_id), int(h.command_id), int(h.op))
        handlers = {
            (1, 0, 0): self._state_read, (1, 0, 2): self._state_write,
            (1, 1, 2): self._upload, (1, 5, 2): self._erase,
            (0, 0, 2): self._echo, (0, 5, 2): self._reset, (0, 6, 0): self._params,
        }  # fmt: skip
        handler = handlers.get(key)
        if handler is None:
            response = self._error(h, MGMT_ERR.ENOTSUP)
        else:
            response = handler(h, frame)
        for packet in smppacket.encode(bytes(response), line_length=128):
            self.send(packet)
        if handler == self._reset:
            self.reset()

    def _error(self, h, rc):
        class Err(ErrorV1):
            _GROUP_ID = h.group_id
            _COMMAND_ID = h.command_id
            _OP = smphdr.OP(int(h.op) + 1)

        return Err(rc=rc, sequence=h.sequence)

    def _images(self):
        images = []
        p, s = self.primary.info(), self.secondary.info()
        if p:
            images.append(smpimg.ImageState(slot=0, version=p[0], hash=p[1], bootable=True,
                                            active=True, confirmed=self.image_ok or None,
                                            permanent=None))  # fmt: skip
        if s:
            images.append(smpimg.ImageState(
                slot=1, version=s[0], hash=s[1], bootable=True,
                pending=bool(self.pending) or None,
                permanent=(self.pending == "permanent") or None,
                confirmed=(self.trial or None),  # the old image kept for the revert
            ))  # fmt: skip
        return images

    def _state_read(self, h, frame):
        return smpimg.ImageStatesReadResponse(sequence=h.sequence, images=self._images())

    def _state_write(self, h, frame):
        req = smpimg.ImageStatesWriteRequest.loads(frame)
        p, s = self.primary.info(), self.secondary.info()
        if req.confirm and (req.hash is None or (p and req.hash == p[1])):
            self.image_ok, self.trial = True, False
            self._publish(("confirm", p[0] if p else None))
        elif s and req.hash == s[1]:
            self.pending = "permanent" if req.confirm else "test"
            self._publish(("test", s[0], self.pending))
        else:
            return self._error(h, MGMT_ERR.EINVAL)
        return smpimg.ImageStatesWriteResponse(sequence=h.sequence, images=self._images())

    def _upload(self, h, frame):
        req = smpimg.ImageUploadWriteRequest.loads(frame)
        if req.off == 0:
            if req.len is None or req.len > SLOT_SIZE:
                return self._error(h, MGMT_ERR.EINVAL)
            if self.trial and not self.image_ok:
                return self._error(h, MGMT_ERR.EBUSY)  # the revert copy must stay
            self.upload = {"len": req.len, "sha": req.sha}
            self.pending = None
            self.secondary = Slot()
            self.busy(ERASE_S * ((req.len + 2047) // 2048))
            self._publish(("upload-start", req.len))
        elif self.upload is None or req.off != len(self.secondary.data):
            return self._error(h, MGMT_ERR.EINVAL)
        self.secondary.data += req.data
        self.busy(PROGRAM_S * ((len(req.data) + 7) // 8))
        off = len(self.secondary.data)
        self._publish(("upload", off))
        match = None
        if off >= self.upload["len"]:
            if self.upload["sha"]:
                match = hashlib.sha256(bytes(self.secondary.data)).digest() == self.upload["sha"]
            self.upload = None
            self._publish(("upload-done", off))
        return smpimg.ImageUploadWriteResponse(sequence=h.sequence, off=off, match=match)

    def _erase(self, h, frame):
        self.secondary, self.pending = Slot(), None
        return smpimg.ImageEraseResponse(sequence=h.sequence)

    def _echo(self, h, frame):
        req = smpos.EchoWriteRequest.loads(frame)
        return smpos.EchoWriteResponse(sequence=h.sequence, r=req.d)

    def _reset(self, h, frame):
        return smpos.ResetWriteResponse(sequence=h.sequence)

    def _params(self, h, frame):
        return smpos.MCUMgrParametersReadResponse(sequence=h.sequence, buf_size=BUF_SIZE,
                                                  buf_count=4)  # fmt: skip
