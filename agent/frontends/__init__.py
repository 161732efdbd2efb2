"""Front-ends that bring jobs in and send statuses out (the MQTT API today)."""
