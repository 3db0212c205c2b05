"""LoRA (Hu et al. 2021, arXiv:2106.09685) for GPT-2's linears, in torchtune's shape: a typed `LoRALinear` that owns
its frozen `weight`/`bias` (so base keys are unchanged) plus free functions over the model.

    y = x W^T + b + scale * (dropout(x) A^T) B^T,   A: (r, in) Kaiming-uniform, B: (out, r) zeros

B = 0 makes the wrapped model start exactly at the base model (§4.1); scale = alpha / r, or alpha / sqrt(r) with
rsLoRA (Kalajdzievski 2023), which keeps the update's size stable as r grows. Initialisation follows PEFT, so the
same seed and targets give PEFT's parameter counts and outputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from model.gpt2 import GPT

logger = logging.getLogger(__name__)

LoRATarget = Literal["qkv", "attn_proj", "fc", "mlp_proj"]
# target name -> the linear's path inside a block (Hugging Face's names)
TARGETS: dict[str, str] = {
    "qkv": "attn.c_attn",
    "attn_proj": "attn.c_proj",
    "fc": "mlp.c_fc",
    "mlp_proj": "mlp.c_proj",
}
DEFAULT_TARGETS: tuple[LoRATarget, ...] = ("qkv", "attn_proj", "fc", "mlp_proj")


def _check_hparams(rank: Any, alpha: Any, dropout: Any) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA `rank` must be an integer >= 1, but got rank={rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"LoRA `alpha` must be a number > 0, but got alpha={alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA `dropout` must be in [0, 1), but got dropout={dropout!r}")


class LoRALinear(nn.Module):
    """A frozen linear plus a trainable low-rank update.

    Args:
        in_dim: input features.
        out_dim: output features.
        rank: the adapter's rank r (>= 1); "can be as low as 1" for attention (LoRA §7.2).
        alpha: scale numerator (> 0); alpha = 2 r is a common choice.
        dropout: dropout on the adapter's input only, in [0, 1). Default: 0.0 (skipped entirely).
        use_bias: whether the base linear has a bias. Default: True (all of GPT-2's do).
        rslora: scale by alpha / sqrt(r) instead of alpha / r. Default: False.

    Raises:
        ValueError: rank < 1, alpha <= 0 or dropout outside [0, 1).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_bias: bool = True,
        rslora: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_hparams(rank, alpha, dropout)
        factory = {"device": device, "dtype": dtype}
        self.in_dim, self.out_dim, self.rank, self.alpha = in_dim, out_dim, rank, float(alpha)
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim, **factory), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_dim, **factory), requires_grad=False) if use_bias else None
        self.lora_a = nn.Linear(in_dim, rank, bias=False, **factory)
        self.lora_b = nn.Linear(rank, out_dim, bias=False, **factory)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale = alpha / (math.sqrt(rank) if rslora else rank)
        self.merged = False
        self.reset_lora_parameters()

    @classmethod
    def from_linear(cls, linear: nn.Linear, **lora_kwargs: Any) -> LoRALinear:
        """Wrap an existing linear: its weight and bias tensors are reused (frozen), not copied."""
        w = linear.weight
        # built on meta so no throw-away base weight is allocated; only the adapter gets real memory
        module = cls(
            linear.in_features,
            linear.out_features,
            use_bias=linear.bias is not None,
            device="meta",
            dtype=w.dtype,
            **lora_kwargs,
        )
        module.weight = linear.weight.requires_grad_(False)
        module.bias = linear.bias.requires_grad_(False) if linear.bias is not None else None
        module.lora_a.to_empty(device=w.device)
        module.lora_b.to_empty(device=w.device)
        module.reset_lora_parameters()
        return module

    def reset_lora_parameters(self) -> None:
        # PEFT's init: A as nn.Linear's default (Kaiming-uniform, a=sqrt(5)), B zeros
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def adapter_params(self) -> list[str]:
        """Names of the adapter's tensors inside this module (torchtune's `AdapterModule` protocol)."""
        return ["lora_a.weight", "lora_b.weight"]

    def delta_weight(self) -> torch.Tensor:
        """scale · B A, the update `merge` adds to the base weight, shape (out, in)."""
        return (self.lora_b.weight @ self.lora_a.weight) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight; later forwards skip the adapter."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        h = F.linear(self.dropout(x), self.lora_a.weight)  # (..., r)
        b = self.lora_b.weight
        if b.dtype != out.dtype:  # under autocast: in-place ops are not cast for us
            b, h = b.to(out.dtype), h.to(out.dtype)
        # out += scale * h @ B^T in one GEMM, in place: no (..., out) temporary
        out.view(-1, self.out_dim).addmm_(h.reshape(-1, self.rank), b.t(), alpha=self.scale)
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}, rank={self.rank}, scale={self.scale:g}, merged={self.merged}"


def lora_modules(gpt: nn.Module) -> dict[str, LoRALinear]:
    """Every `LoRALinear` in the model, by module name."""
    return {name: m for name, m in gpt.named_modules() if isinstance(m, LoRALinear)}


def _plain_linear(module: LoRALinear) -> nn.Linear:
    """An nn.Linear holding the (merged) weight and bias tensors of `module`, not copies."""
    module.merge()
    linear = nn.Linear(module.in_dim, module.out_dim, bias=module.bias is not None, device="meta")
    linear.weight = module.weight
    linear.bias = module.bias
    return linear


def unwrap_lora(block: nn.Module) -> int:
    """Merge and remove the adapters inside `block` (used for frozen blocks); returns how many were removed."""
    found = [(name, m) for name, m in block.named_modules() if isinstance(m, LoRALinear)]
    for name, m in found:
        parent_name, _, child = name.rpartition(".")
        setattr(block.get_submodule(parent_name) if parent_name else block, child, _plain_linear(m))
    return len(found)


def _normalise_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    names = (targets,) if isinstance(targets, str) else tuple(targets)
    if not names:
        raise ValueError(f"LoRA `targets` must name at least one of {', '.join(TARGETS)}, but got targets=[]")
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        raise ValueError(
            f"LoRA `targets` must be among {', '.join(TARGETS)}, "
            f"but got unknown target(s) {', '.join(map(str, unknown))}"
        )
    return tuple(dict.fromkeys(names))


def apply_lora(
    gpt: GPT,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: str | Iterable[str] = DEFAULT_TARGETS,
    rslora: bool = False,
) -> GPT:
    """Freeze the base model and wrap the target linears of every unfrozen block in `LoRALinear`.

    Targets: `qkv` = attn.c_attn (fused q, k, v, wrapped whole as PEFT does), `attn_proj` = attn.c_proj,
    `fc` = mlp.c_fc, `mlp_proj` = mlp.c_proj. Blocks frozen by `freeze_blocks` get no adapters. A classification
    head (`score`) stays trainable; everything else (embeddings, LayerNorms, biases, tied LM head) is frozen.

    Raises:
        ValueError: rank < 1, alpha <= 0, dropout outside [0, 1), an unknown target, or adapters already applied.
    """
    _check_hparams(rank, alpha, dropout)
    names = _normalise_targets(targets)
    if lora_modules(gpt):
        raise ValueError("apply_lora must run once per model, but got a model that already has LoRA adapters")
    gpt.requires_grad_(False)
    kwargs = {"rank": rank, "alpha": alpha, "dropout": dropout, "rslora": bool(rslora)}
    for i, block in enumerate(gpt.transformer.h):
        if i < gpt.frozen_blocks:
            continue
        for name in names:
            parent_name, _, child = TARGETS[name].rpartition(".")
            parent = block.get_submodule(parent_name)
            setattr(parent, child, LoRALinear.from_linear(getattr(parent, child), **kwargs))
    if gpt.score is not None:
        gpt.score.requires_grad_(True)
    gpt.lora_config = {**kwargs, "alpha": float(alpha), "targets": list(names)}
    from model.freeze import count_parameters

    trainable, total = count_parameters(gpt)
    logger.info(
        "LoRA r=%d alpha=%g on %s: %s trainable of %s parameters (%.3f%%)",
        rank,
        alpha,
        ",".join(names),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return gpt


def merge_lora(gpt: GPT) -> GPT:
    """Fold every adapter into its base weight and put plain `nn.Linear`s back: a plain GPT-2 again, as fast."""
    for block in gpt.transformer.h:
        unwrap_lora(block)
    gpt.lora_config = None
    return gpt


def adapter_state_dict(gpt: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors by their model names (e.g. `transformer.h.0.attn.c_attn.lora_a.weight`)."""
    state = {}
    for name, module in lora_modules(gpt).items():
        for p in module.adapter_params():
            state[f"{name}.{p}"] = module.get_parameter(p).detach()
    return state
