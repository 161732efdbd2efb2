"""charger-fleet: the operator's side. Rolls a signed release out to a fleet of chargers in a
pilot and waves over the agent's documented MQTT API, halts on failures, reports the matrix."""
