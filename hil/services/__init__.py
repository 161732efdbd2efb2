"""Real backend services on loopback for tests, rigs and the demo: mosquitto, an OCPP CSMS,
a Range-capable HTTP image server that can misbehave on purpose."""
