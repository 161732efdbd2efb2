"""The console driver: ordered expect, full timestamped log, clear failure on timeout/close."""

import os
import socket
import threading
import tty

import pytest

from hil.drivers.console import Console, ConsoleClosed, ConsoleTimeout


class PtyBoard:
    """A 'board' writing to the master side of a pty whose slave the console opens."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)

    def say(self, data):
        os.write(self.master, data)

    def heard(self, n):
        return os.read(self.master, n)

    def close(self):
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def board():
    b = PtyBoard()
    yield b
    b.close()


def test_expect_consumes_in_order(board):
    with Console(board.port) as con:
        board.say(b"U-Boot 2023.01\r\nHit any key\r\n=> ")
        assert con.expect(r"U-Boot (\S+)", timeout=5).group(1) == "2023.01"
        assert con.expect("=> ", timeout=5)
        # The prompt was consumed: the same pattern now needs new output.
        with pytest.raises(ConsoleTimeout):
            con.expect("=> ", timeout=0.2)


def test_timeout_message_carries_the_console_tail(board):
    with Console(board.port) as con:
        board.say(b"Loading Environment from Flash... bad CRC\n")
        con.expect("bad CRC", timeout=5)
        with pytest.raises(ConsoleTimeout) as err:
            con.expect("BOOTING SLOT", timeout=0.2)
    assert "bad CRC" in str(err.value)


def test_send_line_reaches_the_board_and_the_log(board, tmp_path):
    log = tmp_path / "console.log"
    with Console(board.port, log_path=str(log)) as con:
        con.send_line("printenv bootcmd")
        assert board.heard(100) == b"printenv bootcmd\n"
        board.say(b"bootcmd=run rauc_select\r\n")
        con.expect("bootcmd=(.*)\n", timeout=5)
    lines = log.read_text().splitlines()
    assert lines[0].split(None, 2)[1:] == [">", "printenv bootcmd"]
    assert lines[1].split(None, 2)[1:] == ["<", "bootcmd=run rauc_select"]
    assert [float(line.split()[0]) >= 0 for line in lines] == [True, True]
    assert [(d, t) for _, d, t in con.lines] == [
        ("tx", "printenv bootcmd\n"),
        ("rx", "bootcmd=run rauc_select"),
    ]


def test_utf8_split_across_reads_is_not_mangled(board):
    with Console(board.port) as con:
        data = "Temperatur 40 °C ok\n".encode()
        cut = data.index(b"\xb0")  # inside the two-byte degree sign
        board.say(data[:cut])
        con.expect("40 ", timeout=5)
        board.say(data[cut:])
        assert con.expect("(.)C ok", timeout=5).group(1) == "°"


def test_socket_console_and_closed_board():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
    t.start()
    with Console("socket://127.0.0.1:%d" % port) as con:
        t.join(timeout=5)
        peer = accepted[0]
        peer.sendall(b"=> ")
        con.expect("=> ", timeout=5)
        peer.close()  # QEMU exited / board lost power
        with pytest.raises(ConsoleClosed):
            con.expect("never", timeout=10)
    server.close()


def test_loop_url_needs_no_hardware():
    with Console("loop://") as con:
        con.send_line("ping")
        assert con.expect("ping\n", timeout=5)
        assert "ping" in con.text()
