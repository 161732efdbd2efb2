"""An STM32G47x as its ROM bootloader (AN3155 over UART) and its application see it.

BOOT0 high at reset: system memory runs the bootloader (Get, Get Version, Get ID, Read
Memory, Go, Write Memory, Extended Erase or, with extended_erase=False, the older Erase,
Readout Protect/Unprotect). BOOT0 low: the
application in flash runs if it is a valid image (hil/emulators/mcu_image.py), else the
chip hard-faults and stays silent. Flash is 512 KiB of 2 KiB pages that only program when
erased; option bytes at 0x1FFF7800 hold the RDP byte (0xAA: level 0). At level 1 every
Read/Write/Go/Erase is NACKed; Readout Unprotect mass-erases the flash and clears it.
The chip waits for the host without timeouts, as the ROM does: a host that loses its place
resets it (NRST) and syncs again.
"""

import os

from hil.emulators import mcu_image
from hil.emulators.base import McuOnPty

ACK, NACK = b"\x79", b"\x1f"
FLASH, PAGE = 0x08000000, 2048
OPTION, OPTION_SIZE = 0x1FFF7800, 0x30
SYSMEM, SYSMEM_SIZE = 0x1FFF0000, 0x7000
RAM, RAM_SIZE = 0x20000000, 0x20000
PID = 0x469
BOOTLOADER_VERSION = 0x31
COMMANDS = (0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92)
RDP_LEVEL0 = 0xAA
# Modelled flash timing (realtime only), close to the STM32G4 datasheet's typical values.
ERASE_S = 0.022  # per 2 KiB page
PROGRAM_S = 82e-6  # per 8-byte double word


class BadRequest(Exception):
    pass


class Stm32Rom(McuOnPty):
    FRAME_BITS = 11  # AN3155: 8 data bits, even parity, 1 stop bit

    def __init__(self, lines_dir=None, realtime=False, flash_size=512 * 1024, flash_path=None,
                 rdp=False, extended_erase=True):  # fmt: skip
        McuOnPty.__init__(self, lines_dir, realtime)
        # Older bootloaders (v2.x, e.g. STM32F1) list Erase (0x43) instead of Extended Erase.
        self.commands = COMMANDS if extended_erase else tuple(
            0x43 if c == 0x44 else c for c in COMMANDS)  # fmt: skip
        self.flash_size = flash_size
        self.flash_path = flash_path
        self.flash = bytearray(b"\xff" * flash_size)
        if flash_path and os.path.exists(flash_path):
            with open(flash_path, "rb") as f:
                self.flash[:] = f.read(flash_size).ljust(flash_size, b"\xff")
        self.option = bytearray(b"\xff" * OPTION_SIZE)
        self.option[0] = 0xBB if rdp else RDP_LEVEL0
        self.ram = bytearray(RAM_SIZE)
        self.app = None

    @property
    def protected(self):
        return self.option[0] != RDP_LEVEL0

    def boot_mode(self):
        if self.boot0:
            return "bootloader"
        return "app" if mcu_image.parse(self.flash) else "hardfault"

    def run(self):
        mode = self.boot_mode()
        if mode == "bootloader":
            self._bootloader()
        elif mode == "app":
            self._application(mcu_image.parse(self.flash))

    # -- the application ---------------------------------------------------------------------

    def _application(self, info):
        self.app = mcu_image.App(info)
        line = b""
        while True:
            line += self._get(1, None)
            if line.endswith(b"\n"):
                reply = self.app.reply(line.decode("ascii", "replace").strip())
                line = b""
                if reply is not None:
                    self.send(reply.encode() + b"\n")

    # -- the bootloader ----------------------------------------------------------------------

    def _bootloader(self):
        while self._get(1, None) != b"\x7f":
            pass  # before the sync byte the bootloader listens to nothing else
        self.send(ACK)
        handlers = {0x00: self._cmd_get, 0x01: self._cmd_version, 0x02: self._cmd_id,
                    0x11: self._cmd_read, 0x21: self._cmd_go, 0x31: self._cmd_write,
                    0x43: self._cmd_standard_erase, 0x44: self._cmd_erase,
                    0x82: self._cmd_protect, 0x92: self._cmd_unprotect}  # fmt: skip
        while True:
            cmd, comp = self._get(2, None)
            handler = handlers.get(cmd) if cmd in self.commands else None
            if cmd ^ comp != 0xFF or handler is None:
                self.send(NACK)
                continue
            if self.protected and cmd in (0x11, 0x21, 0x31, 0x43, 0x44):
                self.send(NACK)
                continue
            self.send(ACK)
            try:
                if handler() == "go":
                    return self._jump()
            except BadRequest:
                self.send(NACK)

    def _cmd_get(self):
        self.send(bytes((len(self.commands), BOOTLOADER_VERSION) + self.commands) + ACK)

    def _cmd_version(self):
        self.send(bytes((BOOTLOADER_VERSION, 0, 0)) + ACK)

    def _cmd_id(self):
        self.send(bytes((1, PID >> 8, PID & 0xFF)) + ACK)

    def _address(self):
        raw = self._get(5, None)
        x = raw[0] ^ raw[1] ^ raw[2] ^ raw[3]
        if x != raw[4]:
            raise BadRequest()
        return (raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3]

    def _region(self, address, length):
        """(buffer, offset) holding [address, address + length), or BadRequest."""
        for base, buf in ((FLASH, self.flash), (OPTION, self.option), (RAM, self.ram)):
            if base <= address and address + length <= base + len(buf):
                return buf, address - base
        if SYSMEM <= address and address + length <= SYSMEM + SYSMEM_SIZE:
            return bytearray(length), 0
        raise BadRequest()

    def _cmd_read(self):
        address = self._address()
        self._region(address, 1)
        self.send(ACK)
        n, comp = self._get(2, None)
        if n ^ comp != 0xFF:
            raise BadRequest()
        buf, off = self._region(address, n + 1)
        self._publish(("read", address, n + 1))
        self.send(ACK + bytes(buf[off : off + n + 1]))

    def _cmd_write(self):
        address = self._address()
        self._region(address, 1)
        self.send(ACK)
        n = self._get(1, None)[0]
        data = self._get(n + 1, None)
        check = self._get(1, None)[0]
        x = n
        for b in data:
            x ^= b
        if x != check or (n + 1) % 4:
            raise BadRequest()
        buf, off = self._region(address, n + 1)
        if buf is self.flash:
            old = buf[off : off + n + 1]
            if any(o != 0xFF and o != d for o, d in zip(old, data)):
                raise BadRequest()  # programming flash that was not erased: PROGERR
            self.busy(PROGRAM_S * ((n + 1 + 7) // 8))
        buf[off : off + n + 1] = data
        self._persist(buf, off, n + 1)
        self._publish(("write", address, n + 1))
        self.send(ACK)

    def _cmd_erase(self):
        head = self._get(2, None)
        n = (head[0] << 8) | head[1]
        if n in (0xFFFF, 0xFFFE, 0xFFFD):
            if self._get(1, None)[0] != head[0] ^ head[1]:
                raise BadRequest()
            pages = list(range(self.flash_size // PAGE))
        else:
            body = self._get(2 * (n + 1), None)
            x = head[0] ^ head[1]
            for b in body:
                x ^= b
            if self._get(1, None)[0] != x:
                raise BadRequest()
            pages = [(body[i] << 8) | body[i + 1] for i in range(0, len(body), 2)]
            if any(p >= self.flash_size // PAGE for p in pages):
                raise BadRequest()
        self._erase_pages(pages)

    def _cmd_standard_erase(self):
        """Erase (0x43): N-1 in one byte and one byte per page, or 0xFF 0x00 for all."""
        n = self._get(1, None)[0]
        if n == 0xFF:
            if self._get(1, None)[0] != 0x00:
                raise BadRequest()
            return self._erase_pages(list(range(self.flash_size // PAGE)))
        body = self._get(n + 1, None)
        x = n
        for b in body:
            x ^= b
        if self._get(1, None)[0] != x or any(p >= self.flash_size // PAGE for p in body):
            raise BadRequest()
        self._erase_pages(list(body))

    def _erase_pages(self, pages):
        for p in pages:
            self.flash[p * PAGE : (p + 1) * PAGE] = b"\xff" * PAGE
            self._persist(self.flash, p * PAGE, PAGE)
            self.busy(ERASE_S)
        self._publish(("erase", tuple(pages)))
        self.send(ACK)

    def _cmd_go(self):
        address = self._address()
        if not (FLASH <= address < FLASH + self.flash_size or RAM <= address < RAM + RAM_SIZE):
            raise BadRequest()
        self.send(ACK)
        return "go"

    def _jump(self):
        self._publish(("go",))
        info = mcu_image.parse(self.flash)
        if info:
            self._application(info)

    def _cmd_protect(self):
        self.option[0] = 0xBB
        self.send(ACK)
        self._publish(("rdp", 1))
        self.reset()

    def _cmd_unprotect(self):
        self.flash[:] = b"\xff" * self.flash_size
        self._persist(self.flash, 0, self.flash_size)
        self.option[0] = RDP_LEVEL0
        self.send(ACK)
        self._publish(("rdp", 0))
        self.reset()

    def _persist(self, buf, off, n):
        if buf is self.flash and self.flash_path:
            fd = os.open(self.flash_path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, bytes(buf[off : off + n]), off)
            finally:
                os.close(fd)
