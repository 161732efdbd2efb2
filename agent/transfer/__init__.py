"""The transfer path: sources, slots, the streaming pipeline, progress, the installer."""
