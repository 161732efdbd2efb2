"""The bench rig: the scenario catalogue against a real controller board.

The rig file (docs/hil.md, hil/rigs/bench-example.toml) names the board's console, relay
and EV simulator ports, where this host listens for the board, and how the OEM builds a
firmware image with a given defect; releases are signed here with the OEM's test release
key, whose root the bench board was provisioned with. Nothing else differs from the
virtual rig: the same Harness methods drive the same scenarios.
"""

import os
import shlex
import subprocess

from agent.core.errors import ConfigError
from agent.trust import crypto
from hil.harness import Harness
from hil.release import ReleaseKit


def _need(table, key, where, path):
    if key not in table:
        raise ConfigError("%s: [%s] %s is required for a bench rig" % (path, where, key),
                          hint="see hil/rigs/bench-example.toml")  # fmt: skip
    return table[key]


class BenchRig(Harness):
    """description: a loaded hil.rig.Rig of board kind "bench"."""

    def __init__(self, description, workdir, on_status=None, link_rate=0):
        raw, path = description.raw, description.path
        board, backend = raw.get("board", {}), raw.get("backend", {})
        releases = raw.get("releases", {})
        Harness.__init__(
            self, workdir, _need(board, "device_id", "board", path),
            listen=backend.get("listen", "127.0.0.1"),
            ports={"mqtt": _need(backend, "mqtt_port", "backend", path),
                   "ocpp": _need(backend, "ocpp_port", "backend", path),
                   "images": _need(backend, "images_port", "backend", path)},
            tls=bool(backend.get("tls", False)), link_rate=link_rate, on_status=on_status,
        )  # fmt: skip
        self.description = description
        self.boot_banner = raw.get("console", {}).get("boot_banner", Harness.boot_banner)
        self.build_command = _need(releases, "build", "releases", path)
        base = os.path.dirname(os.path.abspath(path))
        key_path = os.path.join(base, _need(releases, "release_key", "releases", path))
        self.kit = ReleaseKit(os.path.join(self.dir, "releases"),
                              _need(board, "model", "board", path),
                              _need(board, "hardware_revision", "board", path),
                              release_key=crypto.load_private(key_path))  # fmt: skip

    def start_board(self):
        d = self.description
        if d.power.kind != "lcus-relay":
            raise ConfigError('%s: a bench rig needs [power] kind = "lcus-relay"' % d.path)
        self.open_drivers(d.console.url, d.power.url, d.power.channel, d.evsim.url)

    def build_image(self, version, defects, pad_bytes):
        """Run the OEM's builder: `build` with {version}, {defects} (comma-separated),
        {pad_bytes} and {out} filled in; it must write the image to {out}."""
        out = os.path.join(self.kit.dir, "firmware-%s.img" % version)
        words = [
            w.format(version=version, defects=",".join(defects), pad_bytes=pad_bytes, out=out)
            for w in shlex.split(self.build_command)
        ]
        done = subprocess.run(words, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(out):
            raise ConfigError("release builder failed (%s): %s"
                              % (done.returncode, done.stderr[-2000:]))  # fmt: skip
        return out
