"""Registers `hydra/sweeper: lorasweep` and its `sampler`/`pruner` groups when Hydra scans its plugins."""

from sweeper._config import register_configs

register_configs()
