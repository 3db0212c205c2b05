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


def check_config(cfg: DictConfig) -> None:
    """Raise `ConfigError` listing every problem of `cfg`; the model preset bounds `freeze.blocks` and `lora.rank`."""
    from model import PRESETS

    problems: list[str] = []
    tr, optim, sched = cfg.trainer, cfg.optim, cfg.schedule
    _in(problems, "model.preset", cfg.model.preset, PRESETS)
    preset = PRESETS.get(cfg.model.preset)

    _in(problems, "finetune.mode", cfg.finetune.mode, FINETUNE_MODES)
    if cfg.finetune.mode == "lora":
        problems += lora_problems(cfg.lora, preset["n_embd"] if preset else None, cfg.model.name)

    n_layer = preset["n_layer"] if preset else None
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


def lora_problems(lora: DictConfig, n_embd: int | None, model_name: str) -> list[str]:
    """The `lora` node against what the model accepts (`model.lora`): every problem, one line each."""
    from model.lora import ALL_TARGETS, INITS, VARIANTS, LoRASettings, target_shape

    problems: list[str] = []
    _positive(problems, "lora.rank", lora.rank)
    if isinstance(lora.rank, float):
        problems.append(f"lora.rank must be an integer, but got lora.rank={lora.rank!r}")
    _positive(problems, "lora.alpha", lora.alpha)
    _positive(problems, "lora.lr_ratio", lora.lr_ratio)
    if not isinstance(lora.dropout, (int, float)) or not 0.0 <= lora.dropout < 1.0:
        problems.append(f"`0 <= lora.dropout < 1` must hold, but got lora.dropout={lora.dropout!r}")
    _in(problems, "lora.variant", lora.variant, VARIANTS)
    _in(problems, "lora.init", lora.init, INITS)
    targets = [str(t) for t in lora.targets] if OmegaConf.is_list(lora.targets) else [lora.targets]
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown or not targets:
        problems.append(
            f"lora.targets must be a non-empty list of {', '.join(ALL_TARGETS)}, but got lora.targets={targets}"
        )
    elif "qkv" in targets and {"q", "k", "v"} & set(targets):
        problems.append(
            f"lora.targets must adapt each projection once (qkv covers q, k and v), but got lora.targets={targets}"
        )
    elif n_embd is not None and not problems:
        for target in targets:
            width = min(target_shape(target, n_embd))
            if lora.rank > width:
                problems.append(
                    f"`lora.rank <= {width}` must hold for target {target} of model={model_name} (its width), "
                    f"but got lora.rank={lora.rank}"
                )
        if not problems:  # whatever else the model would refuse, refused here first
            try:
                LoRASettings(lora.rank, lora.alpha, lora.dropout, tuple(targets), lora.rslora, lora.variant, lora.init)
            except ValueError as e:
                problems.append(str(e))
    return problems


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
    if cfg.finetune.mode != "lora":
        config.pop("lora", None)
    else:  # [v, q] and [q, v] are the same adapters
        config["lora"]["targets"] = lora_targets_label(cfg.lora.targets).split(",")
    if cfg.task.name != "alpaca":
        config.pop("judge", None)
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
