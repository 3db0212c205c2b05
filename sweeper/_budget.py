"""`n_trials` as the study's total budget, shared exactly by every worker process and every resume.

A trial uses the budget while it is COMPLETE, PRUNED, RUNNING or WAITING (queued work that will run); a FAIL
frees its place. Counting and then asking races between processes (both see one place left, both ask), so a
worker asks first and then counts the trials numbered before its own: only a trial inside the budget runs, the
others are closed at once as FAIL with `fail_reason` "not run: ...". Within one process the check and the ask
share a lock, so only several processes racing for the last places leave such trials.

With the grid sampler each grid point runs once: the budget is also bounded by the points not yet taken.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper._outcome import tell

USED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
NOT_RUN = "not run: the study's n_trials budget was already taken by trials of other workers"
DISCARDED_ATTR = "lorasweep:not_run"  # system attribute marking such trials


class Budget:
    def __init__(self, n_trials: int, grid: dict[str, list[Any]] | None = None) -> None:
        self.grid_space = {k: list(v) for k, v in sorted(grid.items())} if grid is not None else None
        self.n_grid = 1 if grid is not None else None
        for values in (grid or {}).values():
            self.n_grid = (self.n_grid or 1) * len(values)
        self.n_trials = n_trials if self.n_grid is None else min(n_trials, self.n_grid)

    @staticmethod
    def _trials(study: optuna.Study) -> list[FrozenTrial]:
        return study.get_trials(deepcopy=False)

    def used(self, study: optuna.Study) -> int:
        return sum(t.state in USED for t in self._trials(study))

    def left(self, study: optuna.Study) -> int:
        """Trials that may still start (0 = the budget is spent)."""
        trials = self._trials(study)
        left = self.n_trials - sum(t.state in USED for t in trials)
        if self.n_grid is not None:
            taken = {self._grid_id(t) for t in trials if t.state != TrialState.WAITING} - {None}
            left = min(left, self.n_grid - len(taken))
        return left

    def admits(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """Whether a freshly asked trial is inside the budget, judged by the trials numbered before it."""
        earlier = [t for t in self._trials(study) if t.number < trial.number]
        if sum(t.state in USED for t in earlier) >= self.n_trials:
            return False
        if self.n_grid is not None:
            mine = self._grid_id(study._storage.get_trial(trial._trial_id))
            if mine is not None and any(self._grid_id(t) == mine for t in earlier if t.state != TrialState.WAITING):
                return False  # another worker took this grid point first
        return True

    def discard(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Close a trial that must not run, leaving its grid point free for a later run."""
        storage = study._storage
        if "grid_id" in storage.get_trial_system_attrs(trial._trial_id):
            storage.set_trial_system_attr(trial._trial_id, "grid_id", -1)
        storage.set_trial_system_attr(trial._trial_id, DISCARDED_ATTR, True)
        trial.set_user_attr("fail_reason", NOT_RUN)
        tell(study, trial, TrialState.FAIL)

    def _grid_id(self, trial: FrozenTrial) -> int | None:
        attrs = trial.system_attrs
        grid_id = attrs.get("grid_id")
        if grid_id is None or attrs.get("search_space") != self.grid_space or not 0 <= grid_id < (self.n_grid or 0):
            return None
        return grid_id


def is_not_run(trial: FrozenTrial) -> bool:
    return bool(trial.system_attrs.get(DISCARDED_ATTR))
