"""A search space of finitely many points (all categorical or stepped) runs each point once, under any sampler.

`python sweep.py -m lora.rank=4,8,16` is three runs. TPE, random and the other samplers draw with replacement,
so with the default n_trials=20 they would ask for the same three ranks again and again. For such a space the
sweeper knows its points: the budget stops once every point is taken (`sweeper._budget`), and the study's sampler
is wrapped so that a point already taken is never proposed twice (it proposes; a taken proposal is swapped for a
free point). The grid sampler keeps its own bookkeeping; a space with a continuous range is not finite.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from sweeper._grammar import SearchSpace, describe, grid_values
from sweeper._optuna_private import retry_history
from sweeper._recorded import same_settings
from sweeper._samplers import derive_seed, sampler_name

MAX_POINTS = 100_000  # larger discrete spaces are treated as unbounded (no enumeration)
DISCARDED_ATTR = "lorasweep:not_run"  # trials closed without running (sweeper._budget) hold no point

PointKey = tuple[tuple[str, Any], ...]


class FiniteSpace:
    """The points of an all-discrete search space, and which of them a study's trials have taken."""

    def __init__(self, distributions: dict[str, BaseDistribution], fixed: dict[str, Any] | None = None) -> None:
        self.distributions = dict(distributions)
        self.fixed = dict(fixed or {})  # a point is taken by a trial with these fixed settings only (extend_study)
        self._values = {name: grid_values(name, d) for name, d in self.distributions.items()}
        self.n_points = math.prod(len(v) for v in self._values.values())

    @classmethod
    def of(cls, space: SearchSpace, fixed: dict[str, Any] | None = None) -> FiniteSpace | None:
        """The space's points, or None when a distribution is continuous or the points are too many to list."""
        sizes = []
        for name, dist in space.distributions.items():
            try:
                sizes.append(len(grid_values(name, dist)))
            except ValueError:  # a continuous interval
                return None
        return cls(space.distributions, fixed) if math.prod(sizes) <= MAX_POINTS else None

    def points(self) -> Iterable[dict[str, Any]]:
        names = list(self._values)
        for combination in itertools.product(*self._values.values()):
            yield dict(zip(names, combination, strict=True))

    def key(self, params: dict[str, Any]) -> PointKey | None:
        """A point's identity; None when `params` lacks a parameter of this space (a trial of another space)."""
        if any(name not in params for name in self.distributions):
            return None
        return tuple((name, _comparable(d, params[name])) for name, d in sorted(self.distributions.items()))

    def taken(self, trials: Sequence[FrozenTrial], skip: Iterable[int] = ()) -> set[PointKey]:
        """The points held by `trials` (but those numbered in `skip`): running, finished or queued, failed ones
        too (a failed point is not run again, as with the grid sampler); trials closed unrun hold none, nor do
        trials of other fixed settings (an extended study runs each point again under its new settings)."""
        skipped = set(skip)
        held = (
            t
            for t in trials
            if t.number not in skipped and not t.system_attrs.get(DISCARDED_ATTR) and same_settings(t, self.fixed)
        )
        return {self.key(t.params) for t in held} & self._all_keys

    @functools.cached_property
    def _all_keys(self) -> set[PointKey | None]:
        """Every point's key: a trial of an earlier, wider range (extend_study) holds none of this space's points."""
        return {self.key(p) for p in self.points()}

    def describe(self) -> str:
        return "; ".join(f"{name}: {describe(d)}" for name, d in self.distributions.items()) or "no parameters"


def _comparable(dist: BaseDistribution, value: Any) -> Any:
    """A value as a point's key holds it: a choice with its type (True is not 1), a number rounded so that a float
    step's noise does not make two points."""
    if isinstance(dist, CategoricalDistribution):
        return type(value).__name__, value
    return round(float(value), 9)


class DistinctPointSampler(BaseSampler):
    """The study's sampler, kept from proposing a point of a finite space that a trial has already taken.

    The wrapped sampler proposes as usual (so TPE still models the results); a proposal already taken is replaced
    by a free point drawn at random (seeded by the trial number when the sampler has a seed).
    """

    def __init__(self, base: BaseSampler, space: FiniteSpace, seed: int | None) -> None:
        self.base, self.space, self.seed = base, space, seed

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.space.distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        proposal = self._propose(study, trial)
        # a retry re-runs the point of the trial it replaces
        skip = [trial.number, *retry_history(trial)]
        taken = self.space.taken(study.get_trials(deepcopy=False), skip)
        if self.space.key(proposal) not in taken:
            return proposal
        free = [p for p in self.space.points() if self.space.key(p) not in taken]
        if not free:
            return proposal  # every point is taken: the budget closes this trial unrun
        rng = np.random.default_rng(None if self.seed is None else derive_seed(self.seed, trial.number))
        return free[int(rng.integers(len(free)))]

    def _propose(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        inner = self.base.infer_relative_search_space(study, trial)
        params = dict(self.base.sample_relative(study, trial, inner)) if inner else {}
        for name, dist in self.space.distributions.items():
            if name not in params:
                params[name] = self.base.sample_independent(study, trial, name, dist)
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def __repr__(self) -> str:
        return f"{sampler_name(self.base)}, each of {self.space.n_points} points once"
