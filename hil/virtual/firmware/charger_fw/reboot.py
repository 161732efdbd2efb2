"""`reboot` on the virtual firmware: ask init to stop everything; the boot ROM boots again."""

import os
import signal


def main():
    with open(os.path.join(os.environ["BOARD_DIR"], "run", "init.pid")) as f:
        os.kill(int(f.read()), signal.SIGTERM)


if __name__ == "__main__":
    main()
