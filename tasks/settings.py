"""Check a composed trial config before anything expensive happens.

Every problem is collected and reported in one `ValueError` (one line per run, problems separated by "; "), so a
user fixes a config once instead of once per field. Hydra already rejects unknown group options.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tasks.train.optim import OPTIMIZERS, SCHEDULES
from tasks.train.runtime import DEVICES, PRECISIONS

LORA_TARGETS = ("qkv", "attn_proj", "fc", "mlp_proj")
FINETUNE_MODES = ("full", "lora")
PHASES = ("search", "confirm")  # a search trial never sees test generations; a confirmation run scores them
# trainer.reuse: which finished twin's result a trial may take instead of training (tasks.train.reuse)
REUSE_MODES = ("same_version", "any_version", "off")
# trainer keys that change how a trial runs or is recorded, never what it computes
NOT_IN_FINGERPRINT = ("num_threads", "reuse")


class ConfigError(ValueError):
    """A trial config that cannot run; raised before data is tokenized or a model is built."""


def _positive(problems: list[str], name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        problems.append(f"`{name} > 0` must hold, but got {name}={value!r}")


def _in(problems: list[str], name: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        problems.append(f"{name} must be one of {', '.join(allowed)}, but got {name}={value!r}")


def check_config(cfg: DictConfig, n_layer: int | None = None) -> None:
    """Raise `ConfigError` listing every problem of `cfg`; `n_layer` bounds `freeze.blocks` when known."""
    problems: list[str] = []
    tr, lora, optim, sched = cfg.trainer, cfg.lora, cfg.optim, cfg.schedule

    _in(problems, "finetune.mode", cfg.finetune.mode, FINETUNE_MODES)
    if cfg.finetune.mode == "lora":
        _positive(problems, "lora.rank", lora.rank)
        if isinstance(lora.rank, float):
            problems.append(f"lora.rank must be an integer, but got lora.rank={lora.rank!r}")
        _positive(problems, "lora.alpha", lora.alpha)
        if not isinstance(lora.dropout, (int, float)) or not 0.0 <= lora.dropout < 1.0:
            problems.append(f"`0 <= lora.dropout < 1` must hold, but got lora.dropout={lora.dropout!r}")
        bad = [t for t in lora.targets if t not in LORA_TARGETS]
        if bad or not lora.targets:
            problems.append(
                f"lora.targets must be a non-empty subset of {list(LORA_TARGETS)}, but got {list(lora.targets)}"
            )

    blocks = cfg.freeze.blocks
    upper = n_layer if n_layer is not None else float("inf")
    if not isinstance(blocks, int) or isinstance(blocks, bool) or not 0 <= blocks <= upper:
        bound = f"n_layer={n_layer} of model={cfg.model.name}" if n_layer is not None else "n_layer"
        problems.append(f"`0 <= freeze.blocks <= {bound}` must hold, but got freeze.blocks={blocks!r}")

    for key in ("batch_size", "grad_accum", "epochs"):
        _positive(problems, f"trainer.{key}", tr[key])
    for key in ("max_steps", "eval_every", "patience", "max_eval_batches", "grad_clip", "num_threads", "bucket"):
        _positive(problems, f"trainer.{key}", tr.get(key), allow_none=True)
    _positive(problems, "trainer.eval_batch_size", tr.get("eval_batch_size"), allow_none=True)
    _in(problems, "trainer.phase", tr.get("phase", "search"), PHASES)
    confirms = tr.get("confirms")
    if confirms is not None and (isinstance(confirms, bool) or not isinstance(confirms, int) or confirms < 0):
        problems.append(f"trainer.confirms must be a trial number >= 0 or null, but got trainer.confirms={confirms!r}")
    _in(problems, "trainer.device", tr.device, DEVICES)
    _in(problems, "trainer.precision", tr.precision, PRECISIONS)
    _in(problems, "trainer.reuse", tr.get("reuse", "same_version"), REUSE_MODES)

    _in(problems, "optim.name", optim.name, OPTIMIZERS)
    _positive(problems, "optim.lr", optim.lr)
    if optim.get("weight_decay", 0.0) < 0:
        problems.append(f"`optim.weight_decay >= 0` must hold, but got optim.weight_decay={optim.weight_decay!r}")
    _in(problems, "schedule.name", sched.name, SCHEDULES)
    ratio = sched.warmup_ratio
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        problems.append(f"`0 <= schedule.warmup_ratio < 1` must hold, but got schedule.warmup_ratio={ratio!r}")
    if not 0.0 <= sched.get("min_lr_ratio", 0.0) <= 1.0:
        problems.append(
            f"`0 <= schedule.min_lr_ratio <= 1` must hold, but got schedule.min_lr_ratio={sched.min_lr_ratio!r}"
        )

    if problems:
        raise ConfigError("; ".join(problems))


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
    config["data_fingerprint"] = data_fingerprint
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def result_fingerprint(config_fp: str, code_version: str) -> str:
    """The same config on the same data with the same code (`code_version`): the same result, up to nondeterminism
    of the hardware."""
    return hashlib.sha256(f"{config_fp}:{code_version}".encode()).hexdigest()[:16]
