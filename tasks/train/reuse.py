"""Which finished trial's result a new trial may take instead of training (`trainer.reuse`).

A trial is known by two fingerprints (`tasks.settings`): `config_fingerprint` (its effective config and its data)
and `result_fingerprint` (that plus the code version). Inside a sweep, once the data is loaded (its fingerprint is
the token cache's key, so nothing is tokenized twice), the trial looks for a COMPLETE trial of the study with:

- `same_version` (the default): the same result fingerprint: same config, same data, same code;
- `any_version`: the same config fingerprint: same config and data, computed by any code version;
- `off`: none; every trial trains.

`tasks.train.record.reuse` then records the twin's result as this trial's (`status: duplicate`, `duplicate_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from tasks.settings import config_fingerprint, result_fingerprint
from tasks.train.runtime import code_version

LOOKUP = {"same_version": "result_fingerprint", "any_version": "config_fingerprint"}


def fingerprints(cfg: DictConfig, data_info: Mapping[str, Any]) -> dict[str, str]:
    """The trial's `config_fingerprint` and `result_fingerprint` (metrics.json and the trial's attributes)."""
    config_fp = config_fingerprint(cfg, data_info.get("data_fingerprint"))
    return {"config_fingerprint": config_fp, "result_fingerprint": result_fingerprint(config_fp, code_version())}


def find_twin(trial: Any, cfg: DictConfig, data_info: Mapping[str, Any]) -> Any:
    """The finished trial whose result this one may take under `trainer.reuse`, or None (also outside a sweep)."""
    attr = LOOKUP.get(cfg.trainer.get("reuse", "same_version"))
    if trial is None or attr is None:
        return None
    return trial.find_complete(attr, fingerprints(cfg, data_info)[attr])
