"""The virtual charger board: a process tree that behaves like a controller (see docs/hil.md)."""
