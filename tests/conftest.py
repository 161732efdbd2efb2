"""Suite-wide guard: no test may write the charger's real state dir (hil/state_guard.py)."""

from hil.state_guard import real_state_dir_untouched  # noqa: F401  (autouse)
