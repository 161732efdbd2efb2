"""The device's trust: the `cryptography` adapter and the trusted-root store."""
