"""Optimizer parameter groups for a (LoRA) model, with LoRA+ learning rates (Hayou et al. 2024, arXiv:2402.12354).

LoRA+ trains B with a larger learning rate than A (B's lr = lr_ratio x A's; the paper suggests ratios around 16),
which its analysis shows makes feature learning efficient at large width; lr_ratio = 1 is plain LoRA. DoRA's
magnitudes learn at B's rate too, as in PEFT's `create_loraplus_optimizer`. Weight decay follows GPT-2 and nanoGPT:
matrices decay; 1-D tensors (biases, LayerNorms, DoRA magnitudes) and the token/position embeddings do not.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from model.lora.apply import lora_adapters

NO_DECAY_NAMES = ("wte.", "wpe.")  # embeddings, by name; every 1-D tensor is undecayed too


def lora_plus_params(model: nn.Module) -> set[int]:
    """ids of the tensors LoRA+ speeds up: every adapter's B and DoRA magnitude."""
    ids = set()
    for adapter in lora_adapters(model).values():
        ids.add(id(adapter.lora_b.weight))
        if adapter.lora_magnitude is not None:
            ids.add(id(adapter.lora_magnitude))
    return ids


def lora_param_groups(
    model: nn.Module, *, lr: float, weight_decay: float, lr_ratio: float = 1.0
) -> list[dict[str, Any]]:
    """The model's trainable tensors in optimizer groups: decayed or not, at lr or at lr_ratio x lr.

    Each group holds `params`, `weight_decay`, `lr` and `lr_scale` (1 or lr_ratio): a schedule that sets the
    learning rate each step must set `group["lr"] = lr_now * group["lr_scale"]` to keep the ratio. Empty groups are
    left out; with lr_ratio = 1 the groups are the decayed then the undecayed tensors, as without LoRA+.

    Raises:
        ValueError: lr_ratio is not a number > 0.
    """
    if isinstance(lr_ratio, bool) or not isinstance(lr_ratio, int | float) or not lr_ratio > 0:
        raise ValueError(f"LoRA+ `lr_ratio` must be a number > 0 (1 = plain LoRA), but got lr_ratio={lr_ratio!r}")
    fast = lora_plus_params(model) if lr_ratio != 1 else set()
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.dim() >= 2 and not any(part in name for part in NO_DECAY_NAMES)
        scale = float(lr_ratio) if id(p) in fast else 1.0
        groups.setdefault((scale, decay), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale, "lr_scale": scale}
        for (scale, decay), params in groups.items()
        if params
    ]
