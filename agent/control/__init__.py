"""The control loop: the daemon, its long steps, reporting, the observation period and the
system edge (reboot, watchdog, local time)."""
