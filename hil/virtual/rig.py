"""The virtual rig: the backend on loopback plus one virtual charger board (hil/virtual).

The board is driven only through the bench drivers (relay, console, EV simulator on ptys),
so the catalogue exercises the same code paths as on a real bench; on top, the virtual board
offers what a bench cannot: its flash files (for torn-write scenarios) and a factory reset.
"""

import hashlib
import json
import os
import sys

import tomli_w

from agent.state.slotstate import SlotState
from bootloader_iface.uboot_env import encode_copy
from hil.harness import Harness
from hil.release import ManufacturerPki, ReleaseKit
from hil.services.mosquitto import free_port
from hil.virtual import layout
from hil.virtual.board import VirtualBoard
from hil.virtual.image import build_image

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

MODEL = "ACME-AC22"
HW = "rev-b"


class VirtualRig(Harness):
    boot_banner = r"\[rom\] booting slot"

    def __init__(self, workdir, device_id="cp-0001", trial_window_s=60, watchdog_s=8.0,
                 factory_version="1.0.0", on_status=None, link_rate=0, agent_overrides=None,
                 tls=False, ocpp=None):  # fmt: skip
        Harness.__init__(self, workdir, device_id, tls=tls, link_rate=link_rate,
                         on_status=on_status)  # fmt: skip
        self.trial_window_s = trial_window_s
        self.watchdog_s = watchdog_s
        self.factory_version = factory_version
        self.agent_overrides = agent_overrides or {}  # {section: {key: value}} for agent.toml
        self.board = None
        self.kit = None
        # "2.0.1" or "1.6": the board's charging stack owns the OCPP connection and drives the
        # agent through its local API (the reference integration, docs/ocpp.md); "everest":
        # the agent serves EVerest's system_API on the rig's broker (an EVerest double drives it).
        self.ocpp = ocpp
        self.mfr = None

    def start_board(self):
        self.kit = ReleaseKit(os.path.join(self.dir, "releases"), MODEL, HW)
        tls = self.pki.tls_settings(self.device_id) if self.tls else None
        overrides = dict(self.agent_overrides)
        if self.ocpp:
            self.mfr = ManufacturerPki(self.kit.dir)
            overrides = ocpp_overrides(self.mfr.root_path, overrides, self.ocpp == "everest")
        self.board = provision(
            os.path.join(self.dir, "board"), self.device_id, self.kit, self.factory_version,
            self.broker.port, self.csms.port, trial_window_s=self.trial_window_s,
            watchdog_s=self.watchdog_s, tls=tls, overrides=overrides, stack_ocpp=self.ocpp,
        )  # fmt: skip
        self.open_drivers(self.board.console_path, self.board.relay.port, 1, self.board.ev.port)

    def parts(self):
        return (self.board,) + Harness.parts(self)

    def ocpp_release(self, version, defects=(), pad_bytes=0, bad_signature=False):
        """Build, sign and publish a release for a CSMS to send: {location, signature,
        signing_certificate} (the detached OCPP signature over the whole bundle file)."""
        url = self.release(version, defects, pad_bytes=pad_bytes)
        path = self.images.files[url.rsplit("/", 1)[1]]
        signature = self.mfr.sign(path)
        if bad_signature:  # signed by the right key, but over other bytes
            other = path + ".other"
            with open(other, "wb") as f:
                f.write(b"not the firmware")
            signature = self.mfr.sign(other)
        return {"location": url, "signature": signature,
                "signing_certificate": self.mfr.signing_certificate}  # fmt: skip

    def build_image(self, version, defects, pad_bytes):
        path = os.path.join(self.kit.dir, "firmware-%s.tar" % version)
        return build_image(path, version, defects, pad_bytes)

    def build_mcu_image(self, name, version, defects, size=None):
        """MCU `name`'s firmware for a release (hil/emulators/mcu_image.py; for the MCUboot
        meter inside an MCUboot image): (path, manifest mcu entry)."""
        path = os.path.join(self.kit.dir, "%s-%s-%s.bin" % (name, version, "-".join(defects)))
        with open(path, "wb") as f:
            f.write(mcu_firmware(name, version, defects, size))
        return path, dict(MCUS[name], id=name, version=version)

    def mcu_version(self):
        """What the safety MCU's flash holds (None: nothing that would boot)."""
        from hil.emulators import mcu_image

        info = mcu_image.parse(self.board.mcu.flash)
        return info["version"] if info else None

    def meter_state(self):
        """(version, confirmed) of the image the meter MCU's MCUboot boots (None: none)."""
        info = self.board.meter.primary.info()
        return (info[0], self.board.meter.image_ok) if info else (None, False)

    # The virtual board's relay acts at once; wait for it so a cut is really a cut.

    def _switch(self, on, timeout=10.0):
        with self.board.switched:
            before = self.board.switches
        Harness.power_on(self) if on else Harness.power_cut(self)
        with self.board.switched:
            if not self.board.switched.wait_for(lambda: self.board.switches > before, timeout):
                state = "on" if on else "off"
                raise TimeoutError("the relay did not switch the board %s" % state)

    def power_on(self):
        self._switch(True)

    def power_cut(self):
        self._switch(False)

    # -- virtual-only -------------------------------------------------------------------------

    def power_cut_during_env_write(self):
        """Power off, then leave half of the next env copy on flash: the torn write a cut in
        the middle of the agent's try_slot leaves (every offset: tests/bootloader)."""
        self.power_cut()
        env = layout.boot_env(self.board.dir)
        variables, active, flags = env.read_state()
        torn = dict(variables, BOOT_ORDER="B A", BOOT_B_LEFT="1")
        blob = encode_copy(torn, env.size, True, (flags[active] + 1) % 256)
        inactive = env.copies[1 - active]
        with open(inactive["device"], "r+b") as f:
            f.seek(inactive["offset"])
            f.write(blob[: len(blob) // 2])

    def stack(self):
        """The board's charging stack, as a driver at the charger would use it."""
        from agent.station.charging import SocketStack

        return SocketStack(os.path.join(self.board.dir, "run", "stack.sock"))


def ocpp_overrides(mfr_root, overrides=None, everest=False):
    """agent.toml for a board whose stack owns the OCPP connection: the local API (or, for
    EVerest, its system_API on the board's broker), the manufacturer root, and the trial's
    CSMS check through the stack."""
    out = dict(overrides or {})
    if everest:
        api = {"module_id": "system_api", "ocpp_module_id": "ocpp", "reboot_grace_s": 2}
        out["everest"] = dict(api, **out.get("everest", {}))
    else:
        out["local_api"] = dict({"socket": "run/agent.sock"}, **out.get("local_api", {}))
    firmware = {"manufacturer_roots": [mfr_root], "reboot_grace_s": 3}
    out["ocpp_firmware"] = dict(firmware, **out.get("ocpp_firmware", {}))
    return out


def provision(board_dir, device_id, kit, factory_version, mqtt_port, ocpp_port,
              trial_window_s=60, watchdog_s=8.0, tls=None, overrides=None,
              stack_ocpp=None):  # fmt: skip
    """A factory-fresh virtual board that trusts `kit`'s root, runs `factory_version` from
    slot A and reaches the backend (on 127.0.0.1) through its uplink; returns the board.
    stack_ocpp ("2.0.1" | "1.6"): the board's stack owns its OCPP connection in that protocol
    and drives the agent through the local API."""
    local_mqtt, local_ocpp = free_port(), free_port()
    sections = {
        "device": {"id": device_id, "model": kit.model, "hardware_revision": kit.hardware_revision,
                   "group": "pilot", "site_type": "public-ac"},
        "trust": {"root": kit.root_path},
        "mqtt": {"host": "127.0.0.1", "port": local_mqtt, "prefix": "chargers",
                 "reconnect_max_s": 2.0},
        "ocpp": {"url": "ws://127.0.0.1:%d/ocpp" % local_ocpp},
        "charging_stack": {"socket": "run/stack.sock", "poll_s": 0.5},
        "system": {"reboot_command": [sys.executable, "-m", "charger_fw.reboot"],
                   "utc_offset_s": 0, "boot_id_file": "run/boot_id"},
        "trial": {"window_s": trial_window_s,
                  "checks": ["communication", "charging-session", "alarms"],
                  # 1 s: a storm trips at once, and every journey in the suite waits it out
                  "alarms": {"observe_s": 1}},
        "download": {"retries": 5, "backoff_s": 0.2, "backoff_max_s": 2.0, "timeout_s": 10},
    }  # fmt: skip
    if tls:
        sections["mqtt"]["tls"] = tls
    if stack_ocpp:
        comm = dict(sections["trial"].get("communication", {}), ocpp="stack")
        sections["trial"]["communication"] = comm
    for name, table in (overrides or {}).items():
        sections.setdefault(name, {}).update(table)
    factory = build_image(os.path.join(kit.dir, "factory.tar"), factory_version)
    routes = [
        {"local_port": local_mqtt, "host": "127.0.0.1", "port": mqtt_port},
        {"local_port": local_ocpp, "host": "127.0.0.1", "port": ocpp_port},
    ]
    if "everest" in sections:  # EVerest's broker: here the rig's, through the uplink
        sections["everest"] = dict({"host": "127.0.0.1", "port": local_mqtt},
                                   **sections["everest"])  # fmt: skip
    stack = None
    if stack_ocpp and stack_ocpp != "everest":
        stack = {"ocpp": {"url": sections["ocpp"]["url"], "protocol": stack_ocpp},
                 "agent": {"socket": sections["local_api"]["socket"]}}  # fmt: skip
    layout.create(board_dir, sections, routes, factory, watchdog=watchdog_s, stack=stack)
    SlotState(os.path.join(board_dir, "data")).set_good("A", factory_version, 1)
    board = VirtualBoard(board_dir)
    install_mcus(board, factory_version)
    return board


# The board's MCUs: the safety MCU (an STM32 flashed through its ROM bootloader, BOOT0 and
# NRST on controller GPIOs) and the energy meter (MCUboot with swap and revert, SMP on its
# UART, NRST on a GPIO for an application that hangs).
MCUS = {
    "safety": {"protocol": "stm32-rom", "address": 0x08000000},
    "meter": {"protocol": "mcuboot-smp", "address": 0},
}
MCU_IMAGE_SIZE = 16 * 1024
FACTORY_MCU_VERSION = "1.0.0"


def mcu_firmware(name, version, defects=(), size=None):
    """The bytes of MCU `name`'s firmware: the application image, for the meter wrapped in
    an MCUboot image (header, version, hash TLV)."""
    from hil.emulators import mcu_image, mcuboot_image

    body = mcu_image.build(version, defects, size=size or MCU_IMAGE_SIZE)
    if MCUS[name]["protocol"] == "mcuboot-smp":
        return mcuboot_image.build(body, version)
    return body


def install_mcus(board, factory_version):
    """The factory: both MCUs run their first firmware, the agent config names their ports
    and lines, and their images are kept with slot A (what a rollback writes back)."""
    from hil.emulators.mcuboot_dev import Slot

    images = dict((name, mcu_firmware(name, FACTORY_MCU_VERSION)) for name in MCUS)
    board.mcu.flash[: len(images["safety"])] = images["safety"]
    with open(board.mcu.flash_path, "wb") as f:
        f.write(bytes(board.mcu.flash))
    board.mcu.reset()
    board.meter.primary, board.meter.image_ok = Slot(images["meter"]), True
    board.meter.reset()
    config = os.path.join(board.dir, "agent.toml")
    with open(config, "rb") as f:
        sections = tomllib.load(f)
    sections["components"] = {
        "safety": {"protocol": "stm32-rom", "port": board.mcu.port,
                   "boot0": "gpio:mcu-lines/boot0", "nreset": "gpio:mcu-lines/nrst",
                   "start_timeout_s": 5},
        "meter": {"protocol": "mcuboot-smp", "port": board.meter.port,
                  "nreset": "gpio:meter-lines/nrst", "timeout_s": 1.0, "retries": 1,
                  "start_timeout_s": 5},
    }  # fmt: skip
    with open(config, "w") as f:
        f.write(tomli_w.dumps(sections))
    store = os.path.join(board.dir, "data", "components")
    os.makedirs(os.path.join(store, "A"))
    mcus = {}
    for name, image in images.items():
        with open(os.path.join(store, "A", "%s.img" % name), "wb") as f:
            f.write(image)
        mcus[name] = dict(MCUS[name], id=name, version=FACTORY_MCU_VERSION,
                          sha256=hashlib.sha256(image).hexdigest())  # fmt: skip
    versions = dict((name, FACTORY_MCU_VERSION) for name in MCUS)
    for name, data in (
        ("A.json", {"components": dict(versions, rootfs=factory_version), "mcus": mcus}),
        ("running.json", dict((n, {"version": v, "confirmed": True})
                              for n, v in versions.items())),
    ):  # fmt: skip
        with open(os.path.join(store, name), "w") as f:
            json.dump(data, f)
