"""A small charging stack: the firmware the virtual board boots (see hil/virtual/README)."""
