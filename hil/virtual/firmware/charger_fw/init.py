"""PID 1 of the virtual firmware: bring up the charging stack, then the update agent.

Runs from the slot the boot ROM extracted (`python -m charger_fw.init`, cwd = the slot's
root). Reads `firmware.toml` from there; its `defects` list turns this build into one of the
broken releases the HIL catalogue must catch. A reboot request (SIGTERM from the agent's
reboot command) stops everything and exits 0 so the boot ROM boots again.
"""

import os
import signal
import subprocess
import sys
import threading
import time

from charger_fw import bridge, ocpp_client, uplink
from charger_fw import stack as stack_mod

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib


def log(line):
    print("[fw] %s" % line, flush=True)


def main():
    root = os.getcwd()
    board = os.environ["BOARD_DIR"]
    with open(os.path.join(root, "firmware.toml"), "rb") as f:
        fw = tomllib.load(f)
    defects = fw.get("defects", [])
    slot = os.environ.get("CHARGER_SLOT", "?")
    log("charger firmware %s on slot %s (defects: %s)" % (fw["version"], slot, defects or "none"))
    if "crash-on-boot" in defects:
        log("panic: cannot mount data partition")
        return 1

    run = os.path.join(board, "run")
    with open(os.path.join(run, "init.pid"), "w") as f:
        f.write(str(os.getpid()))
    stop = threading.Event()
    start_uplink(board, defects)
    ocpp = start_ocpp(board, fw["version"])
    stack = stack_mod.ChargingStack(defects, pilot_path=os.path.join(board, "ev", "cp"), ocpp=ocpp,
                                    mcu_ports=mcu_ports(board))  # fmt: skip
    stack_mod.serve(stack, os.path.join(run, "stack.sock"))
    if "alarm-storm" in defects:
        stack.start_alarm_storm(stop)
    log("charging stack up")

    agent = start_agent(board, defects)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    while not stop.wait(0.5):
        if "agent-crash-loop" in defects and time.monotonic() - started > 1.5:
            agent.kill()  # this release's agent segfaults a moment after every start
        if agent.poll() is not None:
            log("agent exited with %s; restarting it" % agent.returncode)
            agent = start_agent(board, defects)
            started = time.monotonic()
    log("reboot requested")
    agent.terminate()
    try:
        agent.wait(5)
    except subprocess.TimeoutExpired:
        agent.kill()
    return 0


def mcu_ports(board):
    """{MCU id: UART} as the board's config names them (empty: a board without MCUs)."""
    with open(os.path.join(board, "agent.toml"), "rb") as f:
        config = tomllib.load(f)
    tables = config.get("components", {})
    return dict((name, t["port"]) for name, t in tables.items() if t.get("port"))


def start_ocpp(board, version):
    """The station's OCPP connection, to the CSMS the board's config names (via the uplink).
    With BOARD/stack.toml the stack owns the connection in the protocol it names and drives
    the update agent through its local API (the reference integration, docs/ocpp.md);
    without it, a plain 2.0.1 client next to the agent."""
    with open(os.path.join(board, "agent.toml"), "rb") as f:
        config = tomllib.load(f)
    device = config["device"]
    path = os.path.join(board, "stack.toml")
    if os.path.exists(path):
        with open(path, "rb") as f:
            stack = tomllib.load(f)
        ocpp = stack["ocpp"]
        socket_path = os.path.join(board, stack["agent"]["socket"])
        return ocpp_client.OcppClient(
            ocpp["url"], device["id"], device["model"], version, log,
            protocol=ocpp.get("protocol", "2.0.1"), bridge=bridge.Bridge(socket_path, log),
            variables=stack.get("variables"),
        ).start()  # fmt: skip
    url = config.get("ocpp", {}).get("url")
    if not url:
        return None
    return ocpp_client.OcppClient(url, device["id"], device["model"], version, log).start()


def start_uplink(board, defects):
    """Forward the board's local ports to the backend, unless this release broke the uplink."""
    path = os.path.join(board, "uplink.toml")
    if "no-backend" in defects or not os.path.exists(path):
        log("uplink down")
        return
    with open(path, "rb") as f:
        routes = tomllib.load(f).get("route", [])
    for r in routes:
        uplink.forward(r["local_port"], r["host"], r["port"])
    log("uplink up (%d routes)" % len(routes))


def start_agent(board, defects):
    env = dict(os.environ)
    if "hang-agent" in defects:
        # The release's agent deadlocks at start: it neither reports nor pets the watchdog.
        cmd = [sys.executable, "-c", "import threading; threading.Event().wait()"]
    else:
        cmd = [sys.executable, "-m", "agent", "--config", os.path.join(board, "agent.toml"), "run"]
    return subprocess.Popen(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
