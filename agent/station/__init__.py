"""The charger's own software: the charging-stack adapter and the OCPP probe."""
