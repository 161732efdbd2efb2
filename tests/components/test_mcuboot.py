"""The MCUboot emulator proven with smpmgr (PyPI) first, then our SMP driver against it:
upload, test, reset, confirm; the revert when not confirmed; a torn upload never swapped
in; a frame with a flipped bit dropped and the request repeated; a silent MCU times out."""

import shutil
import subprocess
import sys
import threading

import pytest

from agent.components.mcuboot import Mcuboot, McubootError, image_hash
from hil.emulators import mcu_image, mcuboot_image
from hil.emulators.mcuboot_dev import McubootDevice

pytestmark = pytest.mark.skipif(sys.version_info < (3, 10), reason="smpclient needs 3.10+")


def release(version, size=6000, defects=()):
    return mcuboot_image.build(mcu_image.build(version, defects, size=size), version)


@pytest.fixture
def device():
    with McubootDevice(primary=release("1.0.0")) as dev:
        yield dev


def test_smpmgr_lists_uploads_tests_and_confirms(device, tmp_path):
    smpmgr = shutil.which("smpmgr") or shutil.which("smpmgr", path=sys.prefix + "/bin")
    if not smpmgr:
        pytest.skip("smpmgr is not installed (make test installs it from PyPI)")
    new = release("1.1.0", size=12000)
    (tmp_path / "new.bin").write_bytes(new)

    def run(*args):
        done = subprocess.run([smpmgr, "--port", device.port, "--timeout", "5"] + list(args),
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "version='1.0.0'" in run("image", "state-read")
    run("image", "upload", str(tmp_path / "new.bin"))
    listed = run("image", "state-read")
    assert "version='1.1.0'" in listed and image_hash(new).hex().upper() in listed
    run("image", "state-write", image_hash(new).hex())
    run("os", "reset")
    assert device.wait_for(lambda ev: ("swap", "test", "1.1.0") in ev)
    run("image", "state-write", "--confirm")
    assert device.wait_for(lambda ev: ("confirm", "1.1.0") in ev)
    assert device.image_ok and device.primary.info()[0] == "1.1.0"


def test_driver_flash_then_confirm_keeps_the_new_image(device):
    mcu = Mcuboot(device.port, timeout=1.0)
    assert mcu.running() == ("1.0.0", True)
    steps = []
    mcu.flash(release("1.2.0"), "1.2.0", lambda phase, done, total: steps.append(done))
    assert steps[-1] == len(release("1.2.0"))
    assert mcu.running() == ("1.2.0", False)  # on trial
    mcu.confirm()
    mcu.reset()
    assert mcu.wait_running("1.2.0") == ("1.2.0", True)


def test_unconfirmed_image_is_reverted_by_mcuboot_at_the_next_reset(device):
    mcu = Mcuboot(device.port, timeout=1.0)
    mcu.flash(release("1.3.0"), "1.3.0")
    device.power(False)  # the board's supply cut during the trial: no confirm
    device.power(True)
    assert mcu.wait_running("1.0.0") == ("1.0.0", True)
    assert ("revert", "1.0.0") in device.events


def test_power_cut_mid_upload_leaves_the_old_image_running(device):
    mcu = Mcuboot(device.port, timeout=0.5, retries=0)
    image = release("1.4.0", size=20000)
    failed = []

    def upload():
        try:
            mcu.upload(image)
        except McubootError as e:
            failed.append(e)

    worker = threading.Thread(target=upload)
    worker.start()
    assert device.wait_for(lambda ev: any(e[0] == "upload" and e[1] >= 8000 for e in ev))
    device.power(False)  # the supply goes while the secondary slot is half written
    worker.join(10)
    assert failed
    device.power(True)
    assert mcu.running() == ("1.0.0", True)
    with pytest.raises(McubootError, match="refused"):
        mcu.test(image_hash(image))  # a torn slot never matches the image's hash


def test_flipped_bit_in_a_frame_is_dropped_and_the_request_repeated(device):
    mcu = Mcuboot(device.port, timeout=0.5, retries=2)
    device.faults.append({"kind": "flip-rx", "at": device.rx_count + 30})
    assert mcu.running() == ("1.0.0", True)
    assert ("bad-frame",) in device.events


def test_flipped_bit_in_a_reply_fails_its_crc_and_the_request_is_repeated(device):
    mcu = Mcuboot(device.port, timeout=0.5, retries=2)
    # The first reply of a session is the MCUmgr parameters read inside connect().
    device.faults.append({"kind": "flip-tx", "at": device.tx_count + 30})
    assert mcu.running() == ("1.0.0", True)
    assert ("fault", "flip-tx") in device.events


@pytest.mark.parametrize("kind", ["flip-rx", "flip-tx"])
def test_flipped_bit_mid_upload_starts_it_again_and_the_slot_holds_the_image(device, kind):
    mcu = Mcuboot(device.port, timeout=0.5, retries=2)
    image = release("1.5.0", size=20000)
    # Past the session's first exchanges, into the chunks (rx) or their small replies (tx).
    at = device.rx_count + 5000 if kind == "flip-rx" else device.tx_count + 150
    device.faults.append({"kind": kind, "at": at})
    mcu.upload(image)  # checks the secondary slot's hash TLV is the image's
    assert ("fault", kind) in device.events
    assert [e[0] for e in device.events].count("upload-start") == 2  # again from offset 0
    assert device.secondary.info() == ("1.5.0", image_hash(image))


def test_silent_mcu_times_out_with_a_transient_error():
    with McubootDevice(primary=release("1.0.0")) as dev:
        dev.power(False)  # an MCU that never answers
        mcu = Mcuboot(dev.port, timeout=0.2, retries=1)
        with pytest.raises(McubootError) as e:
            mcu.images()
        assert e.value.retry
