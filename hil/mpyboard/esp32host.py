"""The board controller's side of the emulated OTA writes (esp32.py, ESP32EMU_HOST):
`python esp32host.py set_boot LABEL` or `python esp32host.py mark_valid`, in CPython, on the
flash in ESP32EMU_FLASH, off the app's heap as the chip's C code is. Exit status 0, or the
place of the esp_err_t in ERRORS (esp32._host raises it as the chip's call would).
"""

import os
import sys

os.environ.pop("ESP32EMU_HOST", None)  # this process does the work itself
import esp32  # noqa: E402  (this directory is sys.path[0])
import otadata  # noqa: E402

ERRORS = (otadata.ESP_ERR_INVALID_ARG, otadata.ESP_ERR_OTA_VALIDATE_FAILED,
          otadata.ESP_ERR_NOT_FOUND)  # fmt: skip


def main(argv):
    try:
        if argv[1] == "set_boot":
            esp32.Partition(argv[2]).set_boot()
        else:
            esp32.Partition.mark_app_valid_cancel_rollback()
    except OSError as e:
        code = -e.args[0]
        return ERRORS.index(code) + 1 if code in ERRORS else 255
    except ValueError:  # no such partition
        return ERRORS.index(otadata.ESP_ERR_NOT_FOUND) + 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
