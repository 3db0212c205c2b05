"""OmegaConf resolvers that conf/config.yaml uses; importing this module registers them.

- `${direction:<objective>}`: maximize or minimize for an objective name (or a list), from `tasks.metrics`.
- `${cwd:}`: the absolute directory the command was started from. Unlike `${hydra:runtime.cwd}` it resolves
  before Hydra has set up a run, which the sweeper needs for `hydra.sweep.dir` and `paths.*`.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from tasks.metrics import objective_direction

OmegaConf.register_new_resolver("direction", objective_direction, replace=True)
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
