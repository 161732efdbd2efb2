"""A virtual MicroPython board: ESP-IDF's OTA flash layout on files, its bootloader's choice,
and the agent's MicroPython runtime in a unix-port process (docs/micropython.md)."""
