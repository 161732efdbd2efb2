"""STM32 system-memory (ROM) bootloader over UART, as ST's AN3155 specifies it.

The host sends 0x7F once (the bootloader measures the baud rate from it) and then commands:
a command byte and its complement, answered ACK (0x79) or NACK (0x1F); addresses are four
bytes MSB first plus their XOR; data blocks are at most 256 bytes with an XOR checksum. The
serial framing is 8 data bits, even parity, 1 stop bit.

Invariant: `flash()` returns only when every byte of the image reads back as written; a
command that times out, gets garbage or a NACK is retried from its first byte (a write
whose ACK was lost is settled by reading the block back), and what is still wrong after the
retries raises: Stm32Error (transient: the line, the MCU) or ReadProtected (rejected: the
chip refuses reads and writes until someone removes readout protection, erasing it).
"""

import hashlib
import time

from agent.core.errors import ReadbackMismatch, Rejected, Transient

SYNC, ACK, NACK = 0x7F, 0x79, 0x1F
GET, GET_VERSION, GET_ID = 0x00, 0x01, 0x02
READ, GO, WRITE, ERASE, EXT_ERASE = 0x11, 0x21, 0x31, 0x43, 0x44
READOUT_PROTECT, READOUT_UNPROTECT = 0x82, 0x92
BLOCK = 256
MASS_ERASE = 0xFFFF
# Product id -> (flash start, flash size, page size): devices whose pages are uniform.
DEVICES = {
    0x468: (0x08000000, 128 * 1024, 2048),  # STM32G431/441
    0x469: (0x08000000, 512 * 1024, 2048),  # STM32G47x/48x
    0x460: (0x08000000, 128 * 1024, 2048),  # STM32G07x/08x
    0x435: (0x08000000, 256 * 1024, 2048),  # STM32L43x/44x
    0x410: (0x08000000, 128 * 1024, 1024),  # STM32F10x medium density (standard erase)
}


class Stm32Error(Transient):
    reason = "mcu-bootloader"


class ReadProtected(Rejected):
    reason = "mcu-read-protected"


class CommandRefused(Stm32Error):
    """NACK to the command byte itself: line noise, or readout protection when it lasts."""


def open_port(url, baudrate=115200, timeout=0.05):
    """The MCU's UART as AN3155 wants it: 8 data bits, even parity, 1 stop bit. Opened
    exclusively (flock), so the charging stack cannot talk to the MCU while it is flashed.
    A port that refuses even parity (a Linux pty, which carries no parity bit) is opened
    8N1: the bytes are the same."""
    import termios

    import serial

    last = None
    for parity in (serial.PARITY_EVEN, serial.PARITY_NONE):
        try:
            return serial.serial_for_url(url, baudrate=baudrate, parity=parity,
                                         timeout=timeout, exclusive=True)  # fmt: skip
        except termios.error as e:
            last = e  # EINVAL for the parity setting: try without
        except (serial.SerialException, OSError, ValueError) as e:
            last = e
            break
    raise Stm32Error(
        "cannot open MCU port %s: %s" % (url, last), hint="is the port right, and free?"
    )


def xor(data):
    x = 0
    for b in data:
        x ^= b
    return x


def address_bytes(address):
    raw = bytes(((address >> 24) & 0xFF, (address >> 16) & 0xFF, (address >> 8) & 0xFF,
                 address & 0xFF))  # fmt: skip
    return raw + bytes((xor(raw),))


def pages_for(address, length, flash_start, page_size):
    """Page numbers covering [address, address + length)."""
    if length <= 0:
        return []
    first = (address - flash_start) // page_size
    last = (address + length - 1 - flash_start) // page_size
    return list(range(first, last + 1))


class Stm32Rom:
    """port: an open pyserial port (8E1); boot0/nreset: Lines (agent/components/lines.py).
    delay(seconds) is the hardware wait (reset pulse, boot time); tests pass a fake."""

    def __init__(self, port, boot0=None, nreset=None, timeout=1.0, retries=3,
                 erase_timeout=30.0, delay=time.sleep, page_size=None):  # fmt: skip
        from agent.components.lines import NoLine

        self.port = port
        self.boot0, self.nreset = boot0 or NoLine(), nreset or NoLine()
        self.timeout, self.retries, self.erase_timeout = timeout, retries, erase_timeout
        self.delay = delay
        self.page_size = page_size
        self.commands = None  # from Get
        self.version = None
        self.retried = 0  # commands repeated after a line fault (for tests and logs)

    # -- reset and sync ---------------------------------------------------------------------

    def reset(self, into_bootloader):
        """BOOT0 to the wanted level, then an NRST pulse: the chip starts from system memory
        (BOOT0 high) or from flash (BOOT0 low)."""
        self.boot0.set(into_bootloader)
        self.nreset.set(False)
        self.delay(0.01)
        self.nreset.set(True)
        self.delay(0.05)  # the ROM bootloader needs a moment before it listens

    def enter(self):
        """Reset into the bootloader and sync; learn its commands."""
        self.reset(True)
        self.sync()
        self.get()
        return self

    def sync(self):
        for _ in range(self.retries + 2):
            self.port.reset_input_buffer()
            self._write(bytes((SYNC,)))
            reply = self._read(1, self.timeout)
            # NACK: a bootloader already synced takes 0x7F as a bad command (stm32flash, too).
            if reply in (bytes((ACK,)), bytes((NACK,))):
                return
            self.delay(0.05)
        raise Stm32Error("no answer from the STM32 bootloader on %s" % self._name(),
                         hint="check BOOT0/NRST wiring, the port and 8E1 framing")  # fmt: skip

    # -- the commands -----------------------------------------------------------------------

    def get(self):
        """(bootloader version, [command bytes])."""

        def run():
            self._command(GET)
            n = self._byte()
            data = self._read_n(n + 1)
            self._ack("GET")
            return data[0], list(data[1:])

        self.version, self.commands = self._retry("GET", run)
        return self.version, self.commands

    def get_version(self):
        """(bootloader version, option byte 1, option byte 2): Get Version & Read Protection
        Status (0x01)."""

        def run():
            self._command(GET_VERSION)
            data = self._read_n(3)
            self._ack("GET VERSION")
            return data[0], data[1], data[2]

        return self._retry("GET VERSION", run)

    def get_id(self):
        def run():
            self._command(GET_ID)
            n = self._byte()
            data = self._read_n(n + 1)
            self._ack("GET ID")
            return (data[0] << 8) | data[1]

        return self._retry("GET ID", run)

    def read_memory(self, address, length):
        if not 1 <= length <= BLOCK:
            raise ValueError("read of %d bytes: 1..256" % length)

        def run():
            self._command(READ)
            self._write(address_bytes(address))
            self._ack("READ address 0x%08x" % address)
            n = length - 1
            self._write(bytes((n, n ^ 0xFF)))
            self._ack("READ length")
            return self._read_n(length)

        return self._retry("READ", run)

    def write_memory(self, address, data):
        """One block of up to 256 bytes (padded with 0xFF to a multiple of 4)."""
        data = bytes(data)
        if len(data) % 4:
            data += b"\xff" * (4 - len(data) % 4)
        if not 4 <= len(data) <= BLOCK:
            raise ValueError("write of %d bytes: 4..256" % len(data))

        def run():
            self._command(WRITE)
            self._write(address_bytes(address))
            self._ack("WRITE address 0x%08x" % address)
            frame = bytes((len(data) - 1,)) + data
            self._write(frame + bytes((xor(frame),)))
            self._ack("WRITE data at 0x%08x" % address)

        def settled():  # the ACK was lost, or a retry hit already-programmed flash
            return self.read_memory(address, len(data)) == data

        self._retry("WRITE", run, settled)

    def erase(self, pages):
        """Erase pages (a list of numbers) or everything (MASS_ERASE)."""
        if self.commands is not None and EXT_ERASE not in self.commands:
            return self._standard_erase(pages)
        if pages == MASS_ERASE:
            return self._retry("ERASE", lambda: self._ext_erase(b"\xff\xff"))
        for i in range(0, len(pages), 64):
            batch = pages[i : i + 64]
            body = bytes(((len(batch) - 1) >> 8, (len(batch) - 1) & 0xFF))
            for p in batch:
                body += bytes((p >> 8, p & 0xFF))
            self._retry("ERASE", lambda body=body: self._ext_erase(body))

    def _ext_erase(self, body):
        self._command(EXT_ERASE)
        self._write(body + bytes((xor(body),)))
        self._ack("EXTENDED ERASE", self.erase_timeout)

    def _standard_erase(self, pages):
        def run(body):
            self._command(ERASE)
            self._write(body)
            self._ack("ERASE", self.erase_timeout)

        if pages == MASS_ERASE:
            return self._retry("ERASE", lambda: run(b"\xff\x00"))
        for i in range(0, len(pages), 255):
            batch = bytes([len(pages[i : i + 255]) - 1] + pages[i : i + 255])
            self._retry("ERASE", lambda b=batch: run(b + bytes((xor(b),))))

    def go(self, address):
        def run():
            self._command(GO)
            self._write(address_bytes(address))
            self._ack("GO 0x%08x" % address)

        self._retry("GO", run)

    def readout_unprotect(self):
        """Remove readout protection: the chip mass-erases its flash and resets."""
        self._command(READOUT_UNPROTECT)
        self._ack("READOUT UNPROTECT", self.erase_timeout)

    # -- the whole job ----------------------------------------------------------------------

    def geometry(self):
        pid = self.get_id()
        if pid not in DEVICES and not self.page_size:
            raise Stm32Error(
                "unknown STM32 product id 0x%03x" % pid,
                hint="set page_size for this MCU in its [components] table",
            )
        start, size, page = DEVICES.get(pid, (0x08000000, 1 << 30, self.page_size))
        return pid, start, size, self.page_size or page

    def flash(self, image, address, progress=None):
        """Erase what the image covers, write it in 256-byte blocks, read it all back.

        progress(phase, done_bytes, total_bytes), phase "erase" | "write" | "verify"."""
        image = bytes(image)
        _, start, size, page = self.geometry()
        if address < start or address + len(image) > start + size:
            raise Rejected("image of %d bytes at 0x%08x does not fit the flash (0x%08x + %d)"
                           % (len(image), address, start, size))  # fmt: skip
        if (address - start) % page:
            raise Rejected("image address 0x%08x is not on a %d-byte page" % (address, page))
        report = progress or (lambda *a: None)
        report("erase", 0, len(image))
        self.erase(pages_for(address, len(image), start, page))
        for off in range(0, len(image), BLOCK):
            self.write_memory(address + off, image[off : off + BLOCK])
            report("write", min(off + BLOCK, len(image)), len(image))
        self.verify(image, address, report)

    def verify(self, image, address, report=None):
        """Read the image back; a block read differently twice in a row is really different."""
        digest = hashlib.sha256()
        for off in range(0, len(image), BLOCK):
            want = image[off : off + BLOCK]
            got = self.read_memory(address + off, len(want))
            tries = 0
            while got != want and tries < self.retries:
                tries += 1
                self.retried += 1
                again = self.read_memory(address + off, len(want))
                if again == got:
                    break
                got = again
            if got != want:
                raise ReadbackMismatch("MCU flash at 0x%08x reads back different from the image"
                                       % (address + off))  # fmt: skip
            digest.update(got)
            if report:
                report("verify", min(off + BLOCK, len(image)), len(image))
        return digest.hexdigest()

    def start(self, address):
        """Leave the bootloader: BOOT0 low and a reset, or Go when no reset line is wired."""
        from agent.components.lines import NoLine

        if isinstance(self.nreset, NoLine):
            self.boot0.set(False)
            self.go(address)
        else:
            self.reset(False)

    # -- bytes on the line ------------------------------------------------------------------

    def _retry(self, what, run, settled=None):
        last = None
        for attempt in range(self.retries + 1):
            try:
                return run()
            except Stm32Error as e:
                last = e
                if attempt == self.retries:
                    break
                self.retried += 1
                self._recover()
                if settled is not None:
                    try:
                        if settled():
                            return None
                    except Stm32Error:
                        pass
        if isinstance(last, CommandRefused):
            # AN3155: read, write, erase and go are refused while readout protection is on.
            raise ReadProtected(
                "STM32 on %s refuses %s every time: readout protection is active"
                % (self._name(), what),
                hint="the MCU must be unprotected (this erases it) before it can be flashed",
            )
        raise Stm32Error("%s failed %d times on %s: %s"
                         % (what, self.retries + 1, self._name(), last.message))  # fmt: skip

    def _recover(self):
        """After a fault the bootloader may be mid-command (it has no timeouts, it waits for
        the bytes it still expects): with NRST wired, reset into it and sync again; without,
        drop what arrived and hope the NACK put it back in step."""
        from agent.components.lines import NoLine

        self.delay(0.02)
        self.port.reset_input_buffer()
        if not isinstance(self.nreset, NoLine):
            self.reset(True)
            try:
                self.sync()
            except Stm32Error:
                pass  # the retry that follows fails and says so

    def _command(self, cmd):
        self.port.reset_input_buffer()
        self._write(bytes((cmd, cmd ^ 0xFF)))
        reply = self._read(1, self.timeout)
        if reply == bytes((NACK,)) and cmd in (READ, WRITE, GO, EXT_ERASE, ERASE):
            raise CommandRefused("NACK to command 0x%02x" % cmd)
        self._check_ack(reply, "command 0x%02x" % cmd)

    def _ack(self, what, timeout=None):
        self._check_ack(self._read(1, timeout or self.timeout), what)

    def _check_ack(self, reply, what):
        if reply == bytes((ACK,)):
            return
        if not reply:
            raise Stm32Error("no answer to %s" % what)
        if reply == bytes((NACK,)):
            raise Stm32Error("NACK to %s" % what)
        raise Stm32Error("byte 0x%02x instead of ACK to %s" % (reply[0], what))

    def _byte(self):
        return self._read_n(1)[0]

    def _read_n(self, n):
        data = self._read(n, self.timeout)
        if len(data) != n:
            raise Stm32Error("%d of %d bytes before the timeout" % (len(data), n))
        return data

    def _read(self, n, timeout):
        """Up to n bytes within timeout; the port's own read timeout stays as opened
        (changing it re-applies termios, which a pty refuses with parity set)."""
        deadline = time.monotonic() + timeout
        data = b""
        while len(data) < n:
            chunk = bytes(self.port.read(n - len(data)))
            data += chunk
            if not chunk and time.monotonic() >= deadline:
                break
        return data

    def _write(self, data):
        self.port.write(data)
        self.port.flush()

    def _name(self):
        return getattr(self.port, "port", None) or getattr(self.port, "name", "?")
