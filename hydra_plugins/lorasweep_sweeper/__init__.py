"""Hydra finds sweepers only under `hydra_plugins`: this shim points it at `sweeper/` (no code lives here)."""
