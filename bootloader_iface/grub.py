"""GRUB A/B backend: the BOOT_ORDER/BOOT_x_LEFT scheme of uboot_rauc.py in a grubenv block.

Invariant: same variables, same meaning and the same boot-side function (boot_select) as the
U-Boot RAUC-style scheme; only the store differs. scripts/grub.cfg is the GRUB side: GRUB has
no arithmetic, so it decrements with a chain of string compares (counts are one digit).
"""

from bootloader_iface import BACKENDS
from bootloader_iface.grubenv import DEFAULT_PATH, GrubEnv
from bootloader_iface.uboot_rauc import OrderLeftControl, boot_select

__all__ = ["GrubControl", "boot_select"]


class GrubControl(OrderLeftControl):
    """options: grubenv (default /boot/grub/grubenv), max_attempts, cmdline."""

    name = "grub"

    def open_env(self):
        return GrubEnv(self.options.get("grubenv", DEFAULT_PATH))

    def where(self):
        return "GRUB env (%s)" % self.env.path


BACKENDS[GrubControl.name] = GrubControl
