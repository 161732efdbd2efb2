"""The MicroPython rig: the backend on loopback (hil/harness.py) and one virtual MicroPython
board, so the scenario catalogue runs against the agent's MicroPython runtime too.

Releases are signed with the same kit as every rig (hil/release.py), as a bundle with one
gzip `app` payload: the board's emulated app image (appimage.py) with its defects, compressed
with the deflate window the board's heap affords (`window_bits`, signed into the manifest).
"""

import json
import os
import shutil

from hil.harness import Harness
from hil.mpyboard import flash
from hil.mpyboard.board import MpyBoard
from hil.release import ReleaseKit

MODEL = "ACME-AC11-MPY"
HW = "esp32-rev3"
DEFECTS = ("crash-on-boot", "no-backend", "refuse-session", "alarm-storm")
# What a small heap affords (docs/micropython.md): a 4 KiB inflate window, held from start,
# and 1 KiB flash chunks.
WINDOW_BITS = 12
CHUNK_BYTES = 1024
INSTALL = {"max_window_bits": WINDOW_BITS, "chunk_bytes": CHUNK_BYTES, "hold_window": True}


class AppKit(ReleaseKit):
    """ReleaseKit whose bundles carry the image as the board's `app` payload."""

    PAYLOAD = ("app", "app")
    window_bits = 15

    def image_payload(self, image):
        from agent.bundle.writer import PayloadSource

        return PayloadSource("app", "app", image, "gzip", window_bits=self.window_bits)


def build_image(path, version, defects=(), pad_bytes=0):
    unknown = [d for d in defects if d not in DEFECTS]
    if unknown:
        raise ValueError("unknown defect(s) %s; known: %s" % (unknown, ", ".join(DEFECTS)))
    _, _, _, appimage = flash.modules(os.path.dirname(path))
    body = os.urandom(pad_bytes // 2) + b"\x00" * (pad_bytes - pad_bytes // 2)
    with open(path, "wb") as f:
        f.write(appimage.build({"version": version, "defects": list(defects)}, body))
    return path


class MpyRig(Harness):
    boot_banner = r"\[rom\] booting ota_"
    # The signed header (the download step's, kept on flash for the verify and install
    # steps' VMs: agent/mpy/steps.py), then one stream for the install: the header again,
    # against the checked one, and the payload from the same connection (no format probe:
    # this board installs format 1 only).
    bundle_requests = (None, None)

    def __init__(self, workdir, device_id="mpy-0001", trial_window_s=30, heap="96K",
                 factory_version="1.0.0", link_rate=0, on_status=None, window_bits=WINDOW_BITS,
                 install=None, tls=False, https=False, listen="127.0.0.1"):  # fmt: skip
        """window_bits: the deflate window of the releases this rig signs; install: the
        board's [install] settings (default INSTALL: it inflates windows up to WINDOW_BITS,
        holding that window's room from start, in CHUNK_BYTES chunks); tls: the broker takes
        TLS with client certificates only (the board gets its own, CN = device id); https:
        releases are served over https (the board gets the rig's CA as download ca_file)."""
        Harness.__init__(self, workdir, device_id, link_rate=link_rate, on_status=on_status,
                         tls=tls, https=https, listen=listen)  # fmt: skip
        self.trial_window_s = trial_window_s
        self.heap = heap
        self.window_bits = window_bits
        self.install = install or dict(INSTALL)
        self.factory_version = factory_version
        self.board = None
        self.kit = None

    def start_board(self):
        self.kit = AppKit(os.path.join(self.dir, "releases"), MODEL, HW)
        self.kit.window_bits = self.window_bits
        board_dir = os.path.join(self.dir, "board")
        self.board = provision(board_dir, self.device_id, self.kit,
                               self.factory_version, self.broker.port, self.trial_window_s,
                               self.heap, self.install, self.board_tls(board_dir),
                               self.listen)  # fmt: skip

    def edit_config(self, edit):
        """Change the board's agent.json as its factory would have (before power_on):
        edit(cfg, board_dir) changes the dict in place."""
        path = os.path.join(self.board.dir, "agent.json")
        with open(path) as f:
            cfg = json.load(f)
        edit(cfg, self.board.dir)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)

    def board_tls(self, board_dir):
        """{"mqtt": tls table, "download": ca_file} for the board, its files copied onto the
        board's filesystem as a factory would provision them."""
        out = {}
        if self.tls:
            files = self.pki.tls_settings(self.device_id)
            out["mqtt"] = dict((k, _copy(v, board_dir, "tls")) for k, v in files.items())
        if self.https:
            out["download"] = _copy(self.pki.ca_file, board_dir, "tls")
        return out

    def parts(self):
        return (self.board,) + Harness.parts(self)

    def build_image(self, version, defects, pad_bytes):
        return build_image(os.path.join(self.kit.dir, "app-%s.bin" % version), version,
                           defects, pad_bytes)  # fmt: skip

    def power_on(self):
        self.board.power_on()

    def power_cut(self):
        self.board.power_off()

    def power_cut_during_env_write(self):
        self.power_cut()

    def console_text(self):
        return self.board.text() if self.board else ""


def _copy(path, board_dir, sub):
    """`path` copied under board_dir/sub; its name relative to board_dir (the board's cwd)."""
    os.makedirs(os.path.join(board_dir, sub), exist_ok=True)
    name = os.path.join(sub, os.path.basename(path))
    shutil.copyfile(path, os.path.join(board_dir, name))
    return name


def provision(board_dir, device_id, kit, factory_version, mqtt_port, trial_window_s=30,
              heap="96K", install=None, tls=None, mqtt_host="127.0.0.1"):  # fmt: skip
    """A factory-fresh board: erased otadata, `factory_version` in ota_0, the kit's root;
    `tls`: {"mqtt": the [mqtt] tls table, "download": the CA file for https}."""
    os.makedirs(os.path.join(board_dir, "data"), exist_ok=True)
    factory = build_image(os.path.join(board_dir, "factory.bin"), factory_version)
    with open(factory, "rb") as f:
        flash.create(os.path.join(board_dir, "flash"), f.read())
    shutil.copyfile(kit.root_path, os.path.join(board_dir, "root.json"))
    cfg = {
        "device": {"id": device_id, "model": kit.model, "hardware_revision": kit.hardware_revision,
                   "group": "pilot", "site": "home-7", "site_type": "home-ac"},
        "mqtt": {"host": mqtt_host, "port": mqtt_port, "prefix": "chargers", "keepalive": 30,
                 "reconnect_max_s": 2},
        "trust": {"root": "root.json"},
        "state_dir": "data",
        "slot_class": "app",
        "trial": {"window_s": trial_window_s,
                  "checks": ["communication", "charging-session", "alarms"],
                  "alarms": {"observe_s": 2}, "communication": {"timeout_s": 5}},
        "download": {"timeout_s": 10},
        "install": install or dict(INSTALL),
        "log_heap": True,
    }  # fmt: skip
    tls = tls or {}
    if "mqtt" in tls:
        cfg["mqtt"]["tls"] = tls["mqtt"]
    if "download" in tls:
        cfg["download"]["ca_file"] = tls["download"]
    with open(os.path.join(board_dir, "agent.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    slots = {"slots": {"ota_0": {"state": "good", "version": factory_version,
                                 "security_version": 1}}, "security_version": 1}  # fmt: skip
    with open(os.path.join(board_dir, "data", "slots.json"), "w") as f:
        json.dump(slots, f)
    return MpyBoard(board_dir, heap)
