"""ESP-IDF's OTA rules in the emulation the virtual MicroPython board boots from.

Each test names the rule it defends (from esp_ota_ops.c and bootloader_utility.c with
CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE): sequence numbers, image states, the bootloader's choice
and its rollback. The emulated esp32.Partition follows the MicroPython 1.29 stubs.
"""

import inspect

import pytest

from hil.mpyboard import flash as flash_mod

SIZE = 0x10000


@pytest.fixture
def emu(tmp_path):
    path = str(tmp_path / "flash")
    esp32, bootloader, otadata, appimage = flash_mod.modules(path)
    flash_mod.create(path, appimage.build({"version": "1.0.0"}), app_size=SIZE)
    return esp32, bootloader, otadata, appimage


def entries(esp32):
    return [(e.seq, e.state) for e in esp32.read_otadata()]


def write_image(esp32, appimage, label, version):
    part = esp32.Partition(label)
    image = appimage.build({"version": version}, b"x" * 5000)
    image += b"\xff" * (-len(image) % 4096)
    for i in range(0, len(image), 4096):
        part.writeblocks(i // 4096, image[i : i + 4096])
    return part


def test_erased_otadata_boots_ota_0_and_records_it(emu):
    esp32, bootloader, otadata, _ = emu
    assert entries(esp32)[0][0] == otadata.EMPTY_SEQ
    assert bootloader.boot()[0] == "ota_0"
    assert entries(esp32)[0] == (1, otadata.VALID)  # set_actual_ota_seq
    assert esp32.Partition(esp32.Partition.RUNNING).info()[4] == "ota_0"


def test_set_boot_writes_the_other_sector_with_the_next_sequence_as_new(emu):
    esp32, bootloader, otadata, appimage = emu
    bootloader.boot()
    write_image(esp32, appimage, "ota_1", "1.1.0").set_boot()
    assert entries(esp32) == [(1, otadata.VALID), (2, otadata.NEW)]
    assert esp32.Partition(esp32.Partition.BOOT).info()[4] == "ota_1"


def test_new_image_boots_once_as_pending_verify_and_is_aborted_by_any_reset(emu):
    esp32, bootloader, otadata, appimage = emu
    bootloader.boot()
    write_image(esp32, appimage, "ota_1", "1.1.0").set_boot()
    assert bootloader.boot() == ("ota_1", {"version": "1.1.0"})
    assert entries(esp32)[1] == (2, otadata.PENDING_VERIFY)
    # The app never called mark_app_valid_cancel_rollback: the next reset rolls back.
    assert bootloader.boot()[0] == "ota_0"
    assert entries(esp32) == [(1, otadata.VALID), (2, otadata.ABORTED)]
    assert bootloader.boot()[0] == "ota_0"  # an aborted entry is never chosen again


def test_mark_app_valid_keeps_the_new_image(emu):
    esp32, bootloader, otadata, appimage = emu
    bootloader.boot()
    write_image(esp32, appimage, "ota_1", "1.1.0").set_boot()
    bootloader.boot()
    esp32.Partition.mark_app_valid_cancel_rollback()
    assert entries(esp32)[1] == (2, otadata.VALID)
    assert bootloader.boot()[0] == "ota_1"
    assert bootloader.boot()[0] == "ota_1"


def test_set_boot_refuses_an_image_that_does_not_validate(emu):
    esp32, bootloader, otadata, appimage = emu
    bootloader.boot()
    part = write_image(esp32, appimage, "ota_1", "1.1.0")
    part.ioctl(6, 1)  # erase a block in the middle: the appended SHA-256 no longer matches
    before = entries(esp32)
    with pytest.raises(OSError) as e:
        part.set_boot()
    assert e.value.args[0] == -otadata.ESP_ERR_OTA_VALIDATE_FAILED
    assert entries(esp32) == before


def test_the_ota_writes_run_off_the_apps_heap_with_the_same_rules(emu, monkeypatch):
    # On the virtual board (ESP32EMU_HOST) set_boot() and mark_app_valid_cancel_rollback()
    # run in the controller's CPython, as the chip runs them in C: same rules, same errors.
    import shlex
    import sys

    esp32, bootloader, otadata, appimage = emu
    script = esp32.__file__.replace("esp32.py", "esp32host.py")
    monkeypatch.setattr(esp32, "HOST", "%s %s" % (shlex.quote(sys.executable), script))
    monkeypatch.setenv("ESP32EMU_FLASH", esp32.FLASH_DIR)
    monkeypatch.delenv("ESP32EMU_HOST", raising=False)
    bootloader.boot()
    bad = write_image(esp32, appimage, "ota_1", "1.1.0")
    bad.ioctl(6, 1)
    before = entries(esp32)
    with pytest.raises(OSError) as e:
        bad.set_boot()
    assert e.value.args[0] == -otadata.ESP_ERR_OTA_VALIDATE_FAILED and entries(esp32) == before
    write_image(esp32, appimage, "ota_1", "1.1.0").set_boot()
    assert entries(esp32)[1] == (2, otadata.NEW)
    assert bootloader.boot()[0] == "ota_1"
    esp32.Partition.mark_app_valid_cancel_rollback()
    assert entries(esp32)[1] == (2, otadata.VALID)


def test_sequence_numbers_grow_and_map_to_slots(emu):
    _, _, otadata, _ = emu
    assert otadata.seq_for_slot(5, 1, 2) == 6
    assert otadata.seq_for_slot(6, 0, 2) == 7
    assert otadata.seq_for_slot(1, 0, 2) == 1
    assert otadata.seq_for_slot(4, 2, 4) == 7  # four slots: (7 - 1) % 4 == 2


def test_torn_sector_write_is_ignored_by_its_crc(emu):
    esp32, bootloader, otadata, appimage = emu
    bootloader.boot()
    write_image(esp32, appimage, "ota_1", "1.1.0").set_boot()
    part = esp32._otadata_partition()
    part._erase(0x1000 + 24, 8)  # the crc never made it to flash
    part._write(0x1000 + 24, b"\x00" * 4 + b"\x12\x34\x56\x78")
    assert bootloader.boot()[0] == "ota_0"


def test_the_loader_falls_back_to_a_slot_with_a_valid_image(emu):
    esp32, bootloader, otadata, appimage = emu
    bootloader.boot()
    write_image(esp32, appimage, "ota_1", "1.1.0").set_boot()
    esp32.Partition("ota_1").ioctl(6, 0)  # image destroyed after set_boot
    assert bootloader.boot()[0] == "ota_0"


def test_both_entries_unusable_boots_ota_0_like_the_real_bootloader(emu):
    esp32, bootloader, otadata, appimage = emu
    bootloader.boot()
    write_image(esp32, appimage, "ota_1", "1.1.0").set_boot()
    bootloader.boot()  # ota_1 pending
    esp32.write_entry(0, otadata.Entry(1, otadata.ABORTED))
    # "OTA sequence numbers both empty ... trying OTA 0": the pending ota_1 is aborted and
    # the loader starts at slot 0 whatever otadata says.
    assert bootloader.boot()[0] == "ota_0"
    assert entries(esp32)[1] == (2, otadata.ABORTED)


def test_mark_valid_on_a_factory_layout_fails(emu):
    esp32, _, otadata, _ = emu
    with pytest.raises(OSError) as e:
        esp32.Partition.mark_app_valid_cancel_rollback()  # otadata still erased
    assert e.value.args[0] == otadata.ESP_FAIL


def test_writes_behave_like_nor_flash(emu):
    esp32, *_ = emu
    part = esp32.Partition("ota_1")
    part.writeblocks(0, b"\x0f" * 4096)
    part.writeblocks(0, b"\xf0" * 16, 0)  # offset form: no erase, bits only clear
    buf = bytearray(16)
    part.readblocks(0, buf)
    assert buf == b"\x00" * 16
    part.writeblocks(0, b"\xf0" * 4096)  # block form erases first
    part.readblocks(0, buf)
    assert buf == b"\xf0" * 16
    assert part.ioctl(4, None) == SIZE // 4096 and part.ioctl(5, None) == 4096


def test_next_update_partition_wraps(emu):
    esp32, bootloader, *_ = emu
    bootloader.boot()
    running = esp32.Partition(esp32.Partition.RUNNING)
    assert running.get_next_update().info()[4] == "ota_1"
    assert esp32.Partition("ota_1").get_next_update().info()[4] == "ota_0"


def _stub_signatures():
    """Partition's method signatures from the esp32 stubs wheel, if pip has it installed."""
    try:
        from importlib.metadata import distribution

        dist = distribution("micropython-esp32-esp32-generic-stubs")
    except Exception:  # noqa: BLE001 - not installed: the caller skips
        return None
    return dist.locate_file("esp32.pyi").read_text()


def test_api_matches_the_micropython_stubs(emu):
    stub = _stub_signatures()
    if stub is None:
        pytest.skip("micropython-esp32-esp32-generic-stubs not installed (make venv installs it)")
    esp32 = emu[0]
    for name in ("readblocks", "writeblocks", "ioctl", "set_boot", "info", "get_next_update",
                 "find", "mark_app_valid_cancel_rollback"):  # fmt: skip
        assert "def %s(" % name in stub
        assert callable(getattr(esp32.Partition, name))
    for const, value in (("RUNNING", 1), ("BOOT", 0), ("TYPE_APP", 0), ("TYPE_DATA", 1)):
        assert "%s: Final[int] = %d" % (const, value) in stub
        assert getattr(esp32.Partition, const) == value
    params = list(inspect.signature(esp32.Partition.__init__).parameters)
    assert params[1:] == ["id", "block_size"]
    assert "def __init__(self, id: str, block_size=4096, /)" in stub
