"""Signed update bundles: byte layout (format), writer, streaming reader, OCPP-style files."""
