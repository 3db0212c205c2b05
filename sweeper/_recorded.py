"""A study remembers the command it was run with: its fixed overrides and its search space.

Re-running a command resumes its study (n_trials is the study's total). Re-running it with another fixed value
(`trainer.max_steps=6` instead of 4) or another search space must not resume: the study's finished trials would
stand for a command that never ran them. So the first run records both as study user attributes, and a later run
on a study that holds trials compares: any difference is refused in one line naming each one and the ways on (a new
`hydra.sweeper.study_name`, or `hydra.sweeper.extend_study=true` to add trials with the new settings on purpose,
which then become the recorded ones). Each trial keeps its own fixed values as user attributes either way.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)
from optuna.trial import FrozenTrial

from sweeper._grammar import SearchSpace, describe, format_value

log = logging.getLogger(__name__)

FIXED_ATTR = "fixed_settings"  # study user attribute: {key: value} of the fixed overrides (secrets left out)
SPACE_ATTR = "search_space"  # study user attribute: {name: Optuna's JSON of the distribution}
TRIAL_FIXED_ATTR = "lorasweep:fixed"  # trial system attribute: the fixed settings it ran with (`SearchSpace.recorded`)


def ran_with(trial: FrozenTrial, fixed: dict[str, Any]) -> dict[str, Any]:
    """The fixed settings `trial` ran with; a trial of an older sweep has them only as user attributes."""
    recorded = trial.system_attrs.get(TRIAL_FIXED_ATTR)
    return dict(recorded) if recorded is not None else {k: trial.user_attrs.get(k) for k in fixed}


def same_settings(trial: FrozenTrial, fixed: dict[str, Any]) -> bool:
    """Whether `trial` ran with these fixed settings (an extended study also holds trials of earlier ones)."""
    return ran_with(trial, fixed) == dict(fixed)


def _shown(fixed: dict[str, Any], space: dict[str, BaseDistribution], key: str) -> str | None:
    """A key as this command or the study sets it: `4`, `4,8,16`, `interval(0.0,1.0)`; None when unset."""
    if key in space:
        return describe(space[key])
    if key in fixed:
        return format_value(fixed[key])
    return None


def differences(
    fixed: dict[str, Any],
    space: dict[str, BaseDistribution],
    stored_fixed: dict[str, Any],
    stored_space: dict[str, BaseDistribution],
) -> list[str]:
    """Each key whose value or search range differs, as `key=now (the study has before)`."""
    out = []
    for key in sorted(set(fixed) | set(space) | set(stored_fixed) | set(stored_space)):
        now, before = _shown(fixed, space, key), _shown(stored_fixed, stored_space, key)
        if now != before:
            now_text = f"{key}={now}" if now is not None else f"{key} unset"
            out.append(f"{now_text} (the study has {before if before is not None else 'it unset'})")
    return out


def _unstorable(trials: list[FrozenTrial], space: dict[str, BaseDistribution]) -> list[str]:
    """Parameters whose new distribution Optuna refuses to store beside the study's trials (a categorical's choices
    cannot change within a study, nor an int range become a float one)."""
    out, seen = [], set()
    for trial in reversed(trials):
        for name, before in trial.distributions.items():
            if name in space and name not in seen:
                seen.add(name)
                try:
                    check_distribution_compatibility(before, space[name])
                except ValueError as e:
                    out.append(f"{name}={describe(space[name])} (the study has {describe(before)}: {e})")
    return out


def check_or_record(study: optuna.Study, space: SearchSpace, *, extend: bool, grid: bool = False) -> None:
    """Record this command's settings on a study without trials; on one with trials, refuse other settings unless
    `extend` (then they become the recorded settings). Raises ValueError with one line.

    Under the grid sampler an extension may widen the search space but not change a fixed setting: Optuna's grid
    sampler takes each grid point once per study, whatever the settings it ran with, so it would run nothing."""
    fixed, distributions = space.recorded(), space.distributions
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    n_trials = len(trials)
    unstorable = _unstorable(trials, distributions)
    if unstorable:
        raise ValueError(
            "A parameter's search space must keep its kind and choices within a study, but got "
            f"{'; '.join(unstorable)} for study {study.study_name!r}; start a new study with "
            "hydra.sweeper.study_name=<new name>."
        )
    if n_trials and FIXED_ATTR in attrs:
        stored_space = {k: json_to_distribution(v) for k, v in (attrs.get(SPACE_ATTR) or {}).items()}
        changed = differences(fixed, distributions, attrs[FIXED_ATTR], stored_space)
        if not changed:
            return
        if not extend:
            raise ValueError(
                f"A resumed study must be run with the settings of its {n_trials} trials, but got "
                f"{'; '.join(changed)} for study {study.study_name!r}; start a new study with "
                "hydra.sweeper.study_name=<new name>, or add trials with these settings to it with "
                "hydra.sweeper.extend_study=true."
            )
        stored_fixed = attrs[FIXED_ATTR]
        if grid and any(fixed.get(k) != stored_fixed.get(k) for k in set(fixed) | set(stored_fixed)):
            raise ValueError(
                "extend_study under the grid sampler must keep the study's fixed settings (Optuna's grid sampler "
                f"runs each point once per study), but got {'; '.join(changed)} for study {study.study_name!r}; "
                "start a new study with hydra.sweeper.study_name=<new name>, or use another sampler (a space of "
                "lists and ranges still runs each point once, per settings)."
            )
        log.warning(
            "Study %r extended with other settings (extend_study=true): %s", study.study_name, "; ".join(changed)
        )
    elif n_trials:
        log.info("Study %r has no recorded settings (an older sweep): recording this command's", study.study_name)
    study.set_user_attr(FIXED_ATTR, fixed)
    study.set_user_attr(SPACE_ATTR, {name: distribution_to_json(d) for name, d in distributions.items()})
