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


def build_optimizer(
    model: nn.Module, cfg: Mapping[str, Any], device: torch.device, *, lr_ratio: float = 1.0
) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over the model's trainable tensors, with fused kernels where torch offers them.

    Groups come from `model.lora_param_groups`: matrices decayed, biases, LayerNorms and embeddings not (GPT-2,
    nanoGPT); with LoRA+ (`lr_ratio` != 1, from `lora.lr_ratio`) every B and DoRA magnitude learns at lr_ratio x lr.
    Each group keeps its `lr_scale`, which `set_lr` honours at every step of the schedule.
    """
    from model import lora_param_groups

    name = cfg["name"]
    lr = float(cfg["lr"])
    groups = lora_param_groups(model, lr=lr, weight_decay=float(cfg.get("weight_decay", 0.0)), lr_ratio=lr_ratio)
    if not groups:
        raise ValueError("the model has no trainable parameters: check finetune, lora.targets and freeze.blocks")
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
    """The schedule's learning rate for this step, times each group's `lr_scale` (LoRA+'s B groups: lr_ratio)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
