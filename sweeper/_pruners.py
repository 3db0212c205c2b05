"""Pruners from the `hydra/sweeper/pruner` group, built the same way in the sweeper and in each job."""

from __future__ import annotations

import logging
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner, NopPruner, PercentilePruner
from optuna.trial import FrozenTrial, TrialState

from sweeper._settings import config_class

log = logging.getLogger(__name__)


GROUP_BY = "group_by"  # our key in the median/percentile pruner configs, not an argument of Optuna's classes
GROUP_ATTR = "lorasweep:group"  # trial system attribute: {key: value} of the group_by keys in the trial's config


def _group_key(trial: FrozenTrial, keys: Sequence[str]) -> tuple[Any, ...]:
    """A trial's values of `keys`, as the sweeper read them from the trial's composed config before it ran.

    Running and finished trials get their values from the same place, so a key that is neither swept nor on the
    command line (every trial has the app's default) still puts all trials in one group.
    """
    recorded = trial.system_attrs.get(GROUP_ATTR)
    if isinstance(recorded, dict):
        return tuple(recorded.get(k) for k in keys)
    return tuple(trial.params.get(k) for k in keys)  # a trial of an older sweep: its swept values only


def group_values(config: Any, keys: Sequence[str]) -> dict[str, Any]:
    """The values of `keys` in a trial's composed config: a config group's chosen option (`model` -> "small"),
    else the key's value (`lora.rank` -> 8; a node becomes its text)."""
    from omegaconf import OmegaConf

    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    values: dict[str, Any] = {}
    for key in keys:
        if key in choices:
            values[key] = choices[key]
            continue
        value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
        is_scalar = value is None or isinstance(value, (str, int, float, bool))
        values[key] = value if is_scalar else str(OmegaConf.to_container(value, resolve=False))
    return values


class _GroupView:
    """A study as the pruner sees it: only the trials of one group (everything else is the study's own)."""

    def __init__(self, study: optuna.Study, keys: Sequence[str], key: tuple[Any, ...]) -> None:
        self._study, self._keys, self._key = study, keys, key

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if _group_key(t, self._keys) == self._key]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class GroupedPruner(BasePruner):
    """Compares a trial only with the trials that share its values of `keys` (e.g. model size and fine-tuning mode).

    Full fine-tuning lowers the loss faster early on than LoRA, and a bigger model than a smaller one: a median taken
    over all trials would stop LoRA or small-model trials for being what they are, and the comparison the study is
    for would lose its cells. Each group also waits for its own `n_startup_trials`.
    """

    def __init__(self, pruner: PercentilePruner, keys: Sequence[str]) -> None:
        self.pruner, self.keys = pruner, list(keys)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        view = _GroupView(study, self.keys, _group_key(trial, self.keys))
        return self.pruner.prune(view, trial)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"{type(self.pruner).__name__} within {'/'.join(self.keys)}"


def pruner_name(pruner: BasePruner) -> str:
    return repr(pruner) if isinstance(pruner, GroupedPruner) else type(pruner).__name__


def build_pruner(spec: dict[str, Any], multi_objective: bool, *, quiet: bool = False) -> BasePruner:
    """The pruner a config names; NopPruner for multi-objective studies, which Optuna cannot prune."""
    cls = config_class("pruner", spec["_target_"], BasePruner)
    kwargs = {k: v for k, v in spec.items() if k not in ("_target_", GROUP_BY)}
    group_by = _group_by(spec.get(GROUP_BY), cls)
    if multi_objective and cls is not NopPruner:
        if not quiet:
            log.warning("Pruning is off: Optuna cannot prune multi-objective studies (%s ignored).", cls.__name__)
        return NopPruner()
    try:
        pruner = cls(**kwargs)
    except TypeError as e:
        raise ValueError(
            f"Pruner arguments must be those of {cls.__module__}.{cls.__name__}, but got {sorted(kwargs)} ({e})."
        ) from None
    return GroupedPruner(pruner, group_by) if group_by else pruner


def _group_by(value: Any, cls: type[BasePruner]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(k, str) and k for k in value):
        raise ValueError(f"`pruner.{GROUP_BY}` must be a list of parameter names, but got {GROUP_BY}={value!r}.")
    if value and not issubclass(cls, PercentilePruner):  # MedianPruner is one
        raise ValueError(
            f"`pruner.{GROUP_BY}` works with the median and percentile pruners, but got {cls.__name__} "
            f"with {GROUP_BY}={list(value)}."
        )
    return list(value)
