"""Pruners from the `hydra/sweeper/pruner` group, built the same way in the sweeper and in each job."""

from __future__ import annotations

import logging
from typing import Any

from optuna.pruners import BasePruner, NopPruner

from sweeper._settings import config_class

log = logging.getLogger(__name__)


def build_pruner(spec: dict[str, Any], multi_objective: bool, *, quiet: bool = False) -> BasePruner:
    """The pruner a config names; NopPruner for multi-objective studies, which Optuna cannot prune."""
    cls = config_class("pruner", spec["_target_"], BasePruner)
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    if multi_objective and cls is not NopPruner:
        if not quiet:
            log.warning("Pruning is off: Optuna cannot prune multi-objective studies (%s ignored).", cls.__name__)
        return NopPruner()
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(
            f"Pruner arguments must be those of {cls.__module__}.{cls.__name__}, but got {sorted(kwargs)} ({e})."
        ) from None
