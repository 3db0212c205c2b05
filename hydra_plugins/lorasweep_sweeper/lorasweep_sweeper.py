"""The Sweeper class Hydra instantiates; it must live under `hydra_plugins`, the work is in `sweeper._sweeper`."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LorasweepSweeper(Sweeper):
    """Optuna sweeper with hydra-optuna-sweeper's keys; see `sweeper/` and the README."""

    def __init__(self, **settings: Any) -> None:
        # imported here so that Hydra's plugin scan at every start does not import Optuna
        from sweeper._sweeper import OptunaSweeper

        self.sweeper = OptunaSweeper(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
