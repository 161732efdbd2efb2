"""HIL drivers over pyserial: console, power relay, EV simulator, and their simulators."""
