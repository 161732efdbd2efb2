"""The agent's MicroPython runtime: the same journey (agent/core) on an ESP32-class board.

Everything here runs on MicroPython (the unix port in tests, an ESP32 in the field); the
crypto, JSON and boot-control modules also run on CPython, which is how they are tested
against `cryptography` and ESP-IDF's rules. docs/micropython.md says what runs where.
"""
