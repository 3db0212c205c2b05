"""Failure policy: what a finished job means for its trial, and telling Optuna without losing the sweep.

COMPLETE: the job returned finite value(s). PRUNED: it raised optuna.TrialPruned (Optuna keeps the last
reported value). FAIL: anything else (an exception, a non-finite loss, out of memory, a dead launcher, a
missing or NaN return value), with the reason in user attribute `fail_reason`; the sweep goes on.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import FrozenTrial, TrialState

from sweeper._optuna_private import study_storage, trial_id

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 2000


@dataclass(frozen=True)
class Outcome:
    """What a job's end means for its trial. Plain values only: holding the job's exception would keep its
    traceback's frames (the trial's model and data) alive while the next trial runs."""

    state: TrialState
    values: list[float] | None = None
    reason: str | None = None
    traceback: str | None = None  # the job's exception, formatted


def describe_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().rstrip(":")
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def job_exception(ret: JobReturn | None) -> BaseException | None:
    """The exception a failed job raised (Hydra keeps it in `_return_value`; `return_value` would re-raise it)."""
    if ret is None or ret.status != JobStatus.FAILED:
        return None
    return ret._return_value


def job_run_dir(ret: JobReturn | None) -> str | None:
    """The job's run folder (Hydra's output_dir), if the launcher returned one."""
    try:
        return str(ret.hydra_cfg.hydra.runtime.output_dir) if ret is not None and ret.hydra_cfg else None
    except Exception:
        return None


def judge(
    ret: JobReturn | None, launch_error: BaseException | None, n_objectives: int | None, note: str | None = None
) -> Outcome:
    """The trial's outcome from the launcher's JobReturn (or the error the launcher itself raised, with `note`
    saying what the sweeper learnt about it). `n_objectives=None`: the job returns no objective (a pack's job,
    whose members' results come through the study): COMPLETE unless it failed."""
    if launch_error is not None:
        # no traceback: it would show the launcher's internals, not the job's
        reason = f"the launcher failed before the job returned: {describe_error(launch_error)}"
        return Outcome(TrialState.FAIL, reason=f"{reason} ({note})" if note else reason)
    if ret is None or ret.status == JobStatus.UNKNOWN:
        return Outcome(TrialState.FAIL, reason="the launcher returned no result for this job")
    error = job_exception(ret)
    if error is not None:
        if isinstance(error, optuna.TrialPruned):
            return Outcome(TrialState.PRUNED)
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
        return Outcome(TrialState.FAIL, reason=describe_error(error), traceback=text)
    if n_objectives is None:
        return Outcome(TrialState.COMPLETE)
    return _values(ret.return_value, n_objectives)


def from_values(value: Any, n_objectives: int) -> Outcome:
    """COMPLETE with the value(s) a trial returned, or FAIL saying why they are not a result (a packed member's)."""
    return _values(value, n_objectives)


def _values(value: Any, n_objectives: int) -> Outcome:
    expected = "a float" if n_objectives == 1 else f"a sequence of {n_objectives} floats (one per direction)"
    is_sequence = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    raw: list[Any] = list(value) if is_sequence or getattr(value, "ndim", 0) else [value]
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        reason = f"the job must return {expected}, but got value={value!r}"
        return Outcome(TrialState.FAIL, reason=reason)
    if len(values) != n_objectives:
        reason = f"the job must return {expected}, but got {len(values)} values: {value!r}"
        return Outcome(TrialState.FAIL, reason=reason)
    if any(math.isnan(v) for v in values):
        return Outcome(TrialState.FAIL, reason=f"the job returned a NaN objective: value={value!r}")
    return Outcome(TrialState.COMPLETE, values=values)


def tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None = None) -> None:
    """study.tell that tolerates GridSampler's `study.stop()`, which raises outside `optimize` (the state is
    already written by then) and a trial already closed elsewhere (e.g. failed as stale)."""
    try:
        study.tell(trial, values=values, state=state, skip_if_finished=True)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def record(study: optuna.Study, trial: optuna.Trial, outcome: Outcome, run_dir: str | None) -> TrialState:
    """Write the outcome: `fail_reason` and `run_dir` user attributes, then the state; return the state stored.

    Writing again after a lost connection is safe: a state already written is kept. The stored state differs
    from the outcome only when another worker failed the trial meanwhile (its heartbeat lapsed).
    """
    storage, tid = study_storage(study), trial_id(trial)
    try:
        if outcome.reason is not None:
            trial.set_user_attr("fail_reason", outcome.reason)
        if run_dir is not None and "run_dir" not in storage.get_trial_user_attrs(tid):
            trial.set_user_attr("run_dir", run_dir)
        tell(study, trial, outcome.state, outcome.values)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # finished elsewhere: the state below says how
    return storage.get_trial(tid).state


def log_failure(number: int, outcome: Outcome, same_as: int | None = None) -> None:
    """The failure with its traceback; one line when trial `same_as` already printed the same failure."""
    if same_as is not None:
        log.warning("trial %d FAIL: %s (as trial %d: traceback above)", number, outcome.reason, same_as)
    elif outcome.traceback is not None:
        log.warning("trial %d FAIL: %s\n%s", number, outcome.reason, outcome.traceback)
    else:
        log.warning("trial %d FAIL: %s", number, outcome.reason)


def progress_line(
    study: optuna.Study, trials: Sequence[FrozenTrial], total: int | None, number: int, outcome: Outcome
) -> str:
    """ "[3/8] trial 4 COMPLETE: 0.91 (best 0.93, trial 2)": a search trial's outcome among the search `trials`."""
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    progress = f"[{done}/{total if total is not None else '?'}]"
    if outcome.state == TrialState.PRUNED:
        return f"{progress} trial {number} PRUNED"
    shown = outcome.values[0] if outcome.values and len(outcome.values) == 1 else outcome.values
    best = ""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(study.directions) == 1 and complete:
        pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        best_trial = pick(complete, key=lambda t: t.value)
        best = f" (best {best_trial.value:.6g}, trial {best_trial.number})"
    return f"{progress} trial {number} COMPLETE: {shown}{best}"
