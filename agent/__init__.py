"""charger-update-agent: keeps EV chargers up to date on A/B slots without taking them down."""

__version__ = "0.1.0"
