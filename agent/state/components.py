"""What the agent knows about the charger's MCUs: the images kept with each slot's release,
and what each MCU runs as the agent last wrote or confirmed it.

    STATE_DIR/components/<slot>/<component>.img   the MCU images of that slot's release
    STATE_DIR/components/<slot>.json              {"components": {name: version},
                                                   "mcus": {name: {id, protocol, address,
                                                   version, sha256}}}
    STATE_DIR/components/running.json             {name: {"version", "confirmed"}}

Invariant: an MCU's running record says version None from before the first byte of a write
until the write was verified, so a power cut mid-write is never mistaken for a finished one;
a slot's record is written only after all its images are on disk (by the installer), and
names every MCU of the board's release: one a release does not carry keeps its version and
image from the slot the release was installed from.
"""

import os

from agent.state.atomic import read_json, write_atomic, write_json_atomic


class ComponentStore:
    def __init__(self, state_dir):
        self.dir = os.path.join(state_dir, "components")

    def image_path(self, slot, name):
        return os.path.join(self.dir, slot, "%s.img" % name)

    def prepare(self, slot):
        os.makedirs(os.path.join(self.dir, slot), exist_ok=True)
        write_json_atomic(os.path.join(self.dir, "%s.json" % slot), {"components": {}, "mcus": {}})

    def record_release(self, slot, manifest, carry_from=None):
        """The release now in `slot`. An MCU of `carry_from`'s release (the booted slot's)
        that this release carries no image for keeps its version: its image and record are
        carried over, so a rollback from a later release can still write it back."""
        mcus = {}
        for p in manifest.payloads:
            if p.mcu is not None:
                mcus[p.component] = dict(p.mcu, sha256=p.installed_sha256)
        components = dict(manifest.components)
        if carry_from is not None and carry_from != slot:
            for name, mcu in self.release(carry_from)["mcus"].items():
                if name in mcus:
                    continue
                try:
                    image = self.read_image(carry_from, name)
                except OSError:
                    image = None  # the record still says what runs; check_kept says the rest
                if image is not None:
                    os.makedirs(os.path.join(self.dir, slot), exist_ok=True)
                    write_atomic(self.image_path(slot, name), image)
                mcus[name] = mcu
                components[name] = mcu["version"]
        record = {"components": components, "mcus": mcus}
        os.makedirs(self.dir, exist_ok=True)
        write_json_atomic(os.path.join(self.dir, "%s.json" % slot), record)

    def release(self, slot):
        """{"components", "mcus"} of the release in `slot` ({} when none was recorded)."""
        if slot is None:
            return {"components": {}, "mcus": {}}
        try:
            data = read_json(os.path.join(self.dir, "%s.json" % slot), default=None) or {}
        except ValueError:
            data = {}
        data.setdefault("components", {})
        data.setdefault("mcus", {})
        return data

    def read_image(self, slot, name):
        with open(self.image_path(slot, name), "rb") as f:
            return f.read()

    def running(self):
        try:
            return read_json(os.path.join(self.dir, "running.json"), default=None) or {}
        except ValueError:
            return {}

    def set_running(self, name, version, confirmed):
        data = self.running()
        data[name] = {"version": version, "confirmed": bool(confirmed)}
        os.makedirs(self.dir, exist_ok=True)
        write_json_atomic(os.path.join(self.dir, "running.json"), data)
