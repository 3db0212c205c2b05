"""Optimizers and learning-rate schedules for a trial.

Only trainable tensors reach the optimizer, so full fine-tuning, LoRA and frozen blocks need no special cases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant")

# parameters that are never decayed: embeddings (by name) and every 1-D tensor (biases, LayerNorm)
_NO_DECAY_NAMES = ("wte.", "wpe.")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group (matrices) and an undecayed one.

    Biases, LayerNorm weights and the token/position embeddings get no weight decay (as in GPT-2 and nanoGPT);
    LoRA's A and B matrices and a classification head are decayed like any other matrix.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2 or any(part in name for part in _NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any], device: torch.device) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over the model's trainable tensors, with fused kernels where torch offers them."""
    name = cfg["name"]
    groups = param_groups(model, float(cfg.get("weight_decay", 0.0)))
    if not groups:
        raise ValueError("the model has no trainable parameters: check finetune, lora.targets and freeze.blocks")
    lr = float(cfg["lr"])
    if name in ("adamw", "adam"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        # fused kernels exist for CUDA and CPU tensors; they save the per-tensor loops of foreach
        fused = device.type in ("cuda", "cpu")
        return cls(
            groups,
            lr=lr,
            betas=tuple(cfg.get("betas", (0.9, 0.999))),
            eps=float(cfg.get("eps", 1e-8)),
            fused=fused,
        )
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=float(cfg.get("momentum", 0.0)), nesterov=bool(cfg.get("nesterov", False))
        )
    raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, but got optim.name={name!r}")


def lr_at(
    step: int, total_steps: int, base_lr: float, schedule: str, warmup_ratio: float, min_lr_ratio: float = 0.0
) -> float:
    """Learning rate of optimizer step `step` (0-based) out of `total_steps`.

    1. warmup, W = round(warmup_ratio * total_steps) steps: lr = base * (step + 1) / (W + 1)
    2. then, with progress p = (step - W) / (total_steps - W) in [0, 1):
       cosine:   lr = min + (base - min) * (1 + cos(pi * p)) / 2
       linear:   lr = base - (base - min) * p
       constant: lr = base
    where min = min_lr_ratio * base. The last step sits just above min, so no step is spent at lr = min.
    """
    warmup = round(warmup_ratio * total_steps)
    if step < warmup:
        return base_lr * (step + 1) / (warmup + 1)
    min_lr = min_lr_ratio * base_lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "cosine":
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return base_lr - (base_lr - min_lr) * progress
    if schedule == "constant":
        return base_lr
    raise ValueError(f"schedule.name must be one of {', '.join(SCHEDULES)}, but got schedule.name={schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
