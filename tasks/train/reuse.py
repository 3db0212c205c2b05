"""Which finished trial's result a new trial may take instead of training (`trainer.reuse`).

A trial is known by two fingerprints: `config_fingerprint` (its effective config and its data)
and `result_fingerprint` (that plus the code version). Inside a sweep, once the data is loaded (its fingerprint is
the token cache's key, so nothing is tokenized twice), the trial looks for a COMPLETE trial of the study with:

- `same_version` (the default): the same result fingerprint: same config, same data, same code;
- `any_version`: the same config fingerprint: same config and data, computed by any code version;
- `off`: none; every trial trains.

`tasks.train.record.reuse` then records the twin's result as this trial's (`status: duplicate`, `duplicate_of`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tasks.train.runtime import code_version

LOOKUP = {"same_version": "result_fingerprint", "any_version": "config_fingerprint"}
# trainer keys that change how a trial runs or is recorded, never what it computes
NOT_IN_FINGERPRINT = ("num_threads", "reuse")


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


def inactive_nodes(cfg: DictConfig) -> list[str]:
    """The config nodes a trial ignores: LoRA's settings under full fine-tuning, the judge for a task that generates
    nothing. Two configs that differ only there train the same model (`config_fingerprint`), and the sweeper's
    confirmation groups leave them out (full fine-tuning trials of any `lora.rank` are one group)."""
    nodes = []
    if cfg.finetune.mode != "lora":
        nodes.append("lora")
    if cfg.task.name != "alpaca":
        nodes.append("judge")
    return nodes


def config_fingerprint(cfg: DictConfig, data_fingerprint: str | None) -> str:
    """A short hash of everything that decides what a trial computes, except the code: the config and the data.

    Two trials with the same fingerprint train the same model on the same data, so a sweep can reuse the first
    one's result: e.g. a grid crossing `finetune=full,lora` with `lora.rank=4,16` holds two full fine-tuning points
    that differ only in a rank they ignore. `data_fingerprint` is the task's `info["data_fingerprint"]` (the token
    cache's key: the files' content or hub commit, and every setting that shapes the tokens), so a changed data file
    is another fingerprint. Left out: where outputs go (`paths`), the LoRA node under full fine-tuning, the judge
    for tasks that generate nothing, and `trainer.num_threads` / `trainer.reuse`.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    config.pop("paths", None)
    config.pop("hydra", None)
    for key in NOT_IN_FINGERPRINT:
        config.get("trainer", {}).pop(key, None)
    for node in inactive_nodes(cfg):
        config.pop(node, None)
    if "lora" in config:  # [v, q] and [q, v] are the same adapters
        config["lora"]["targets"] = lora_targets_label(cfg.lora.targets).split(",")
    config["data_fingerprint"] = data_fingerprint
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lora_targets_label(targets: Iterable[str]) -> str:
    """`lora.targets` as one stable string, in the model's order whatever the order written: "q,v",
    "qkv,attn_proj,fc,mlp_proj". Unknown names go last, as written (the config check refuses them)."""
    from model.lora import ALL_TARGETS

    names = list(dict.fromkeys(str(t) for t in targets))
    order = {name: i for i, name in enumerate(ALL_TARGETS)}
    return ",".join(sorted(names, key=lambda n: order.get(n, len(order))))


def result_fingerprint(config_fp: str, code_version: str) -> str:
    """The same config on the same data with the same code (`code_version`): the same result, up to nondeterminism
    of the hardware."""
    return hashlib.sha256(f"{config_fp}:{code_version}".encode()).hexdigest()[:16]
