"""Boot control for ESP-IDF's OTA scheme, through the `esp32.Partition` API MicroPython exposes.

Slots are the OTA app partitions, named by label (ota_0, ota_1). The agent's boot contract
maps onto ESP-IDF's app rollback (CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE):
  try_slot(new)   Partition(new).set_boot(): otadata names it NEW; the bootloader boots it
                  once as PENDING_VERIFY, and any reset before mark_good aborts it.
  mark_good(run)  Partition.mark_app_valid_cancel_rollback() on the running slot.
  mark_bad(slot)  the inactive slot: erase its first block, so set_boot() refuses it and the
                  bootloader can never pick it; the running slot: if still on trial nothing
                  (the reset that follows makes the bootloader abort it, and the old slot
                  stays VALID throughout), if it was confirmed set_boot(the other).
Any reset of an unconfirmed image (a power cut too) makes the bootloader abort it; the agent
arms it again when the journey says so (agent/mpy/agent.py counts the attempts).

Invariant: set_boot() is only ever called for a slot whose image was written, checked and read
back in full; a failure of the esp32 API raises BootEnvError, never a guess.
"""

from agent.core.errors import BootEnvError

BLOCK = 4096


def _esp32():
    import esp32  # the board's module (or hil/mpyboard/esp32.py, the emulation)

    return esp32


class OtaBoot:
    name = "esp-idf-ota"

    def __init__(self, esp32=None):
        self.esp32 = esp32 or _esp32()
        self.Partition = self.esp32.Partition

    def _part(self, label):
        try:
            return self.Partition(label)
        except (ValueError, OSError) as e:
            raise BootEnvError("no app partition %r (%s)" % (label, e))

    def booted_slot(self):
        return self.Partition(self.Partition.RUNNING).info()[4]

    def primary_slot(self):
        return self.Partition(self.Partition.BOOT).info()[4]

    def other_slot(self, booted):
        return self._part(booted).get_next_update().info()[4]

    def slots(self):
        found = self.Partition.find(self.Partition.TYPE_APP)
        return sorted(p.info()[4] for p in found if p.info()[1] >= 0x10)

    def partition(self, label):
        return self._part(label)

    def try_slot(self, slot):
        try:
            self._part(slot).set_boot()
        except OSError as e:
            raise BootEnvError("set_boot(%s) refused: %s" % (slot, e))

    def mark_good(self, slot):
        if slot != self.booted_slot():
            return  # only the running app can confirm itself
        try:
            self.Partition.mark_app_valid_cancel_rollback()
        except OSError as e:
            raise BootEnvError("mark_app_valid_cancel_rollback failed: %s" % e)

    def mark_bad(self, slot, confirmed=False):
        """confirmed: the running slot passed its trial (mark_good ran), so only a new
        set_boot can move the board away from it. MicroPython exposes no otadata state
        query; the journey knows whether the slot was ever confirmed."""
        if slot != self.booted_slot():
            self._part(slot).ioctl(6, 0)  # BLOCK_ERASE of the image header
        elif confirmed:
            self.try_slot(self.other_slot(slot))

    def attempts_left(self, slot, valid_image):
        """For the inventory: 1 while the bootloader could still boot the slot, else 0."""
        return 1 if valid_image else 0
