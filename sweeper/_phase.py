"""Search trials and confirmation runs in one study: how to tell them apart, and keeping the search blind to the runs.

A confirmation run (`sweeper._confirm`) trains a finished search trial's configuration again with another seed. It
lives in the study it confirms, so the dashboard and the report find it beside its trial, and carries the system
attribute `lorasweep:confirm` = {"trial": <number confirmed>, "seed": <seed>} (plus user attributes `phase`,
`confirms`, `seed` for people and the analysis).

The search must not learn from these runs. Optuna's samplers read every COMPLETE trial of the study: TPE would count
a configuration that was run four times as four good observations at one point and crowd around it, a grid or a
finite space would see its points taken twice, and the pruners would measure new trials against the best
configurations' curves. So the study's sampler is wrapped in `SearchOnlySampler` and each job's pruner in
`SearchOnlyPruner`: they hand Optuna's sampler and pruner a view of the study without confirmation runs (as
`GroupedPruner` hands its pruner one group), and the n_trials budget counts search trials only (`sweeper._budget`).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from sweeper._samplers import sampler_name

CONFIRM_ATTR = "lorasweep:confirm"  # trial system attribute of a confirmation run: {"trial": n, "seed": s}


def confirmation_of(trial: FrozenTrial) -> tuple[int, int] | None:
    """(number of the trial confirmed, seed) for a confirmation run; None for a search trial."""
    mark = trial.system_attrs.get(CONFIRM_ATTR)
    if not isinstance(mark, dict) or "trial" not in mark or "seed" not in mark:
        return None
    return int(mark["trial"]), int(mark["seed"])


def is_confirmation(trial: FrozenTrial) -> bool:
    return confirmation_of(trial) is not None


def search_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if not is_confirmation(t)]


class SearchView:
    """A study as the search's sampler or pruner sees it: every trial but the confirmation runs."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return search_trials(self._study.get_trials(deepcopy=deepcopy, states=states))

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        return search_trials(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class SearchOnlySampler(BaseSampler):
    """The study's sampler, shown the search trials only; a confirmation run (fixed parameters) never reaches it."""

    def __init__(self, base: BaseSampler) -> None:
        self.base = base

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if is_confirmation(trial):
            return {}
        return self.base.infer_relative_search_space(SearchView(study), trial)  # type: ignore[arg-type]

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if is_confirmation(trial):
            return {}
        return self.base.sample_relative(SearchView(study), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.base.sample_independent(SearchView(study), trial, param_name, param_distribution)  # type: ignore[arg-type]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not is_confirmation(trial):  # e.g. GridSampler would give a confirmation run a grid point
            self.base.before_trial(SearchView(study), trial)  # type: ignore[arg-type]

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        if not is_confirmation(trial):
            self.base.after_trial(SearchView(study), trial, state, values)  # type: ignore[arg-type]

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def __repr__(self) -> str:
        return sampler_name(self.base)


class SearchOnlyPruner(BasePruner):
    """A job's pruner, comparing search trials with search trials; a confirmation run is never pruned (a seed
    stopped early would leave the configuration's mean to the seeds that did well)."""

    def __init__(self, base: BasePruner) -> None:
        self.base = base

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if is_confirmation(trial):
            return False
        return self.base.prune(SearchView(study), trial)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return repr(self.base)
