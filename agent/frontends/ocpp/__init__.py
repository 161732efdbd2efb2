"""The OCPP side of the agent: what a charger's OCPP stack (EVerest, an OEM stack, the virtual
board's reference stack) needs from its firmware engine, whatever carries it (MQTT for
EVerest's system_API, a Unix socket for the local API).

statuses.py turns the engine's statuses into OCPP FirmwareStatus values and security events
(pure); outbox.py keeps what the stack must send, durable and in order; service.py admits
UpdateFirmware requests (signing certificate, secure-only, one job per requestId) and answers
the stack's other questions (boot reason, trigger, ManufacturerRootCertificate operations).
The journey never learns which front-end a job came from (docs/ocpp.md).
"""
