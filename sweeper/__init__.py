"""lorasweep's Hydra sweeper on Optuna, and the job-side handle of the running trial.

    from sweeper import current_trial
    trial = current_trial()          # None outside a sweep
    if trial is not None:
        trial.report(val_loss, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
        trial.set_metrics(metrics)   # metrics.json content -> user attributes

Imports are lazy: Hydra imports `sweeper._config` at every start, which must not pull in Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeper._confirm import set_inactive_keys
    from sweeper._grammar import SearchSpace, parse_search_space
    from sweeper._isolation import isolated_job
    from sweeper._pack_job import PackChannel, current_pack, set_pack_key
    from sweeper._preflight import set_config_check
    from sweeper._trial import (
        ENV_STUDY,
        ENV_TRIAL,
        TrialHandle,
        current_trial,
        trial_handle,
        user_attrs_from_metrics,
    )

_LAZY = {
    "ENV_STUDY": "sweeper._trial",
    "ENV_TRIAL": "sweeper._trial",
    "SearchSpace": "sweeper._grammar",
    "PackChannel": "sweeper._pack_job",
    "TrialHandle": "sweeper._trial",
    "current_pack": "sweeper._pack_job",
    "current_trial": "sweeper._trial",
    "isolated_job": "sweeper._isolation",
    "parse_search_space": "sweeper._grammar",
    "set_config_check": "sweeper._preflight",
    "set_inactive_keys": "sweeper._confirm",
    "set_pack_key": "sweeper._pack_job",
    "trial_handle": "sweeper._trial",
    "user_attrs_from_metrics": "sweeper._trial",
}

__all__ = [
    "ENV_STUDY",
    "ENV_TRIAL",
    "PackChannel",
    "SearchSpace",
    "TrialHandle",
    "current_pack",
    "current_trial",
    "isolated_job",
    "parse_search_space",
    "set_config_check",
    "set_inactive_keys",
    "set_pack_key",
    "trial_handle",
    "user_attrs_from_metrics",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
