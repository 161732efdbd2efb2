"""MCU emulators on ptys: the STM32 ROM bootloader (AN3155) and an MCUboot device (SMP).

Each is proven against a real third-party client (stm32flash, smpmgr) in tests/components
before the agent's own drivers are tested against it."""
