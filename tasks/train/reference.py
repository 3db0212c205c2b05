"""A trial's reference rows: the majority class and the untouched model, and whether the trial beat them.

The numbers go into metrics.json's `metrics` (so the sweeper stores them as user attributes): `majority_class`,
`majority_{val,test}_{accuracy,macro_f1}` (classification), `baseline_val_<metric>` (the step-0 evaluation),
`learned` and `flags` (see `tasks.baselines`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.base import TaskData
from tasks.baselines import learning_flags, majority_baseline
from tasks.train.loop import FitState
from tasks.train.objective import Objective


def majority(data: TaskData) -> dict[str, Any]:
    """The majority-class row of a classification task (empty for a language-modelling task)."""
    if data.train.labels is None:
        return {}
    splits = {"val": data.val.labels, "test": data.test.labels}
    return majority_baseline(data.train.labels, {k: v for k, v in splits.items() if v is not None}, data.class_names)


def untouched(state: FitState) -> dict[str, float]:
    """The untouched model's validation metrics (step 0 of the curve) as `baseline_val_<metric>`."""
    if not state.val_curve or state.val_curve[0]["step"] != 0:
        return {}
    return {f"baseline_{k}": v for k, v in state.val_curve[0].items() if k != "step"}


def references(data: TaskData, state: FitState) -> dict[str, Any]:
    """Both reference rows, for a finished or a pruned trial."""
    return {**majority(data), **untouched(state)}


def judged(metrics: Mapping[str, Any], data: TaskData, watch: Objective) -> dict[str, Any]:
    """`learned` and `flags` ("; "-joined reasons, empty when it learned) of a finished trial's metrics."""
    flags = learning_flags(metrics, watch.keys[0], watch.directions[0], len(data.val))
    return {"learned": not flags, "flags": "; ".join(flags)}
