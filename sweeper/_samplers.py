"""Samplers from the `hydra/sweeper/sampler` group: grid built from the search space, seeds that never replay."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler, QMCSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from sweeper._grammar import SearchSpace
from sweeper._settings import config_class

MOTPE = "MOTPESampler"  # removed from Optuna 4.0: selecting it is an error naming its replacements
# samplers whose Optuna implementation imports an optional package on first use (`pip install lorasweep[samplers]`)
NEEDS = {"CmaEsSampler": "cmaes", "GPSampler": "scipy", "QMCSampler": "scipy"}


def derive_seed(seed: int, trial_number: int) -> int:
    """A seed for one trial: the same for the same (seed, trial number), different for every trial."""
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


class PerTrialSeedSampler(BaseSampler):
    """Wraps a seeded sampler and reseeds it from (seed, trial number) before each trial.

    A fixed seed given to several workers (or to a resumed sweep) would make each of them draw the same
    parameter sequence; trial numbers are unique in a study, so seeding per trial keeps a fresh study
    reproducible while workers and resumes explore different points.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._number = -1
        self._current = factory(seed)

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number != self._number:
            self._current = self._factory(derive_seed(self._seed, trial.number))
            self._number = trial.number
        return self._current

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        # tell() runs in several threads at once: use a sampler of that trial's own, not the shared one
        self._factory(derive_seed(self._seed, trial.number)).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()

    def __repr__(self) -> str:
        return f"{type(self._current).__name__}(seed={self._seed}, reseeded per trial)"


def sampler_class(spec: dict[str, Any]) -> type[BaseSampler]:
    target = spec["_target_"]
    if target.rsplit(".", 1)[-1] == MOTPE:
        raise ValueError(
            "The sampler must be one Optuna still has: MOTPESampler was deprecated in Optuna 2.9 in favour of "
            "TPESampler, which handles several objectives, and removed in 4.0, but got hydra/sweeper/sampler=motpe; "
            "use hydra/sweeper/sampler=tpe (hydra.sweeper.sampler.multivariate=true models the parameters jointly) "
            "or hydra/sweeper/sampler=nsgaii."
        )
    return config_class("sampler", target, BaseSampler)


def _check_installed(cls: type[BaseSampler]) -> None:
    """Fail when the sweep starts, not at the first trial Optuna samples, when the sampler's package is missing."""
    module = NEEDS.get(cls.__name__)
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"{cls.__name__} needs the `{module}` package: `pip install 'lorasweep[samplers]'`, "
            f"but got no module named {module!r}."
        ) from None


def build_sampler(spec: dict[str, Any], space: SearchSpace | None) -> tuple[BaseSampler, int | None]:
    """The study's sampler and, for the grid sampler, the number of grid points (None otherwise).

    `space=None` only checks the arguments (when the sweeper is built, before the search space is known).
    """
    kwargs = {k: v for k, v in spec.items() if k != "_target_" and v is not None}
    cls = sampler_class(spec)
    _check_installed(cls)
    seed = kwargs.pop("seed", None)
    if cls is GridSampler:
        grid = space.grid() if space is not None else {}
        n_points = int(np.prod([len(v) for v in grid.values()])) if grid else 1
        return GridSampler(grid, seed=seed, **kwargs), n_points

    def make(s: int | None) -> BaseSampler:
        return cls(**kwargs, seed=s) if s is not None else cls(**kwargs)

    try:
        sampler = make(seed)
    except TypeError as e:
        raise ValueError(
            f"Sampler arguments must be those of {cls.__module__}.{cls.__name__}, "
            f"but got {sorted(kwargs) + (['seed'] if seed is not None else [])} ({e})."
        ) from None
    # QMC splits one sequence among workers: every worker must keep the same seed
    if seed is None or cls is QMCSampler:
        return sampler, None
    return PerTrialSeedSampler(make, seed), None


def sampler_name(sampler: BaseSampler) -> str:
    """Optuna's class name; the sweeper's wrappers (per-trial seeds, distinct points) describe themselves."""
    return repr(sampler) if type(sampler).__module__.startswith("sweeper.") else type(sampler).__name__
