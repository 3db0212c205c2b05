"""`n_trials` as the study's total budget, shared exactly by every worker process and every resume.

A trial uses the budget while it is COMPLETE, PRUNED, RUNNING or WAITING (queued work that will run); a FAIL
frees its place. Counting and then asking races between processes (both see one place left, both ask), so a
worker asks first and then counts the trials numbered before its own: only a trial inside the budget runs, the
others are closed at once as FAIL with `fail_reason` "not run: ...". Within one process the check and the ask
share a lock, so only several processes racing for the last places leave such trials.

With the grid sampler each grid point runs once: the budget is also bounded by the points not yet taken. So is a
finite search space under any other sampler (`sweeper._finite`): `lora.rank=4,8,16` is 3 trials, not n_trials.

A trial of a dead worker (heartbeat-stale) becomes FAIL, which frees its place, and its retry is queued as
WAITING, which takes it: the study ends with n_trials COMPLETE (or PRUNED) trials plus the FAIL. Queued trials
are run even when the count says the budget is spent, since they hold their place already.

Confirmation runs (`sweeper._confirm`) are not counted: they come after the search and have a plan of their own.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper._finite import DISCARDED_ATTR, FiniteSpace
from sweeper._optuna_private import GRID_ID_ATTR, GRID_SPACE_ATTR, retry_history, study_storage, trial_id
from sweeper._outcome import tell
from sweeper._phase import search_trials

USED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
NOT_RUN = "not run: the study's n_trials budget was already taken by trials of other workers"


class Budget:
    def __init__(
        self, n_trials: int, grid: dict[str, list[Any]] | None = None, finite: FiniteSpace | None = None
    ) -> None:
        self.grid_space = {k: list(v) for k, v in sorted(grid.items())} if grid is not None else None
        self.n_grid = 1 if grid is not None else None
        for values in (grid or {}).values():
            self.n_grid = (self.n_grid or 1) * len(values)
        self.requested = n_trials
        self.n_trials = n_trials if self.n_grid is None else min(n_trials, self.n_grid)
        self.finite = finite  # caps the trials still to run by the free points, not the study's total

    @property
    def in_effect(self) -> int:
        """The trials this command can run at most: n_trials, or fewer for a grid or a finite space (what failure
        rates and progress count against)."""
        return self.n_trials if self.finite is None else min(self.n_trials, self.finite.n_points)

    @staticmethod
    def _trials(study: optuna.Study) -> list[FrozenTrial]:
        return search_trials(study.get_trials(deepcopy=False))

    def used(self, study: optuna.Study) -> int:
        return sum(t.state in USED for t in self._trials(study))

    def left(self, study: optuna.Study) -> int:
        """Trials that may still start (0 = the budget is spent)."""
        return self._left(self._trials(study))

    def _left(self, trials: list[FrozenTrial]) -> int:
        left = self.n_trials - sum(t.state in USED for t in trials)
        if self.n_grid is not None:
            taken = {self._grid_id(t) for t in trials if t.state != TrialState.WAITING} - {None}
            left = min(left, self.n_grid - len(taken))
        if self.finite is not None:
            left = min(left, self.finite.n_points - len(self.finite.taken(trials)))
        return left

    def exhausted(self, study: optuna.Study) -> bool:
        """Whether every point of a finite search space has been taken (the sweep stops short of n_trials)."""
        return self.finite is not None and len(self.finite.taken(self._trials(study))) >= self.finite.n_points

    def runnable(self, study: optuna.Study) -> bool:
        """Whether asking makes sense: a place is left, or a queued (WAITING) trial such as a retry awaits."""
        trials = self._trials(study)
        return self._left(trials) > 0 or any(t.state == TrialState.WAITING for t in trials)

    def admits(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """Whether a freshly asked trial is inside the budget, judged by the trials numbered before it."""
        earlier = [t for t in self._trials(study) if t.number < trial.number]
        if sum(t.state in USED for t in earlier) >= self.n_trials:
            return False
        if self.n_grid is not None:
            frozen = study_storage(study).get_trial(trial_id(trial))
            mine = self._grid_id(frozen)
            # a retry re-runs a failed trial's point
            replaced = set(retry_history(frozen))
            taken = [t for t in earlier if t.state != TrialState.WAITING and t.number not in replaced]
            if mine is not None and any(self._grid_id(t) == mine for t in taken):
                return False  # another worker took this grid point first
        if self.finite is not None:
            frozen = study_storage(study).get_trial(trial_id(trial))
            skip = retry_history(frozen)  # a retry re-runs a failed trial's point
            if self.finite.key(frozen.params) in self.finite.taken(earlier, skip):
                return False  # another worker took this point first
        return True

    def discard(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Close a trial that must not run, leaving its grid point free for a later run."""
        storage, tid = study_storage(study), trial_id(trial)
        if GRID_ID_ATTR in storage.get_trial_system_attrs(tid):
            storage.set_trial_system_attr(tid, GRID_ID_ATTR, -1)
        storage.set_trial_system_attr(tid, DISCARDED_ATTR, True)
        trial.set_user_attr("fail_reason", NOT_RUN)
        tell(study, trial, TrialState.FAIL)

    def _grid_id(self, trial: FrozenTrial) -> int | None:
        attrs = trial.system_attrs
        grid_id = attrs.get(GRID_ID_ATTR)
        if grid_id is None or attrs.get(GRID_SPACE_ATTR) != self.grid_space or not 0 <= grid_id < (self.n_grid or 0):
            return None
        return grid_id


def is_not_run(trial: FrozenTrial) -> bool:
    return bool(trial.system_attrs.get(DISCARDED_ATTR))
