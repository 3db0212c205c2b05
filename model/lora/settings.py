"""What `apply_lora` accepts: targets, variants, inits, and the checks that run before anything is built.

Each check raises one `ValueError` line in Optuna's form (the condition, then "but got name=value"), so the trainer
can also call `LoRASettings(...)` and `check_width` on a config before it loads data or weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

LoRATarget = Literal["q", "k", "v", "qkv", "attn_proj", "fc", "mlp_proj"]
LoRAVariant = Literal["lora", "dora"]
LoRAInit = Literal["default", "pissa"]

# whole linears: target name -> the linear's path inside a block (Hugging Face's names)
TARGETS: dict[str, str] = {
    "qkv": "attn.c_attn",
    "attn_proj": "attn.c_proj",
    "fc": "mlp.c_fc",
    "mlp_proj": "mlp.c_proj",
}
# slices of c_attn's output (q, k, v in that order, n_embd rows each): target name -> slice index
QKV_SLICES: dict[str, int] = {"q": 0, "k": 1, "v": 2}
ALL_TARGETS: tuple[LoRATarget, ...] = ("q", "k", "v", "qkv", "attn_proj", "fc", "mlp_proj")
DEFAULT_TARGETS: tuple[LoRATarget, ...] = ("qkv", "attn_proj", "fc", "mlp_proj")
VARIANTS: tuple[LoRAVariant, ...] = ("lora", "dora")
INITS: tuple[LoRAInit, ...] = ("default", "pissa")


def target_shape(target: str, n_embd: int) -> tuple[int, int]:
    """(in, out) features of the weight block a target adapts in a GPT-2 of width `n_embd`."""
    wide = {"qkv": 3 * n_embd, "fc": 4 * n_embd}
    if target == "mlp_proj":
        return 4 * n_embd, n_embd
    return n_embd, wide.get(target, n_embd)


def check_adapter_args(rank: Any, alpha: Any, dropout: Any, variant: Any = "lora") -> None:
    """The checks every adapter needs, whatever it targets."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA `rank` must be an integer >= 1, but got rank={rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"LoRA `alpha` must be a number > 0, but got alpha={alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA `dropout` must be in [0, 1), but got dropout={dropout!r}")
    if variant not in VARIANTS:
        raise ValueError(f"LoRA `variant` must be one of {', '.join(VARIANTS)}, but got variant={variant!r}")


def _normalise_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    names = (targets,) if isinstance(targets, str) else tuple(str(t) for t in targets)
    if not names:
        raise ValueError(f"LoRA `targets` must name at least one of {', '.join(ALL_TARGETS)}, but got targets=[]")
    unknown = [t for t in names if t not in ALL_TARGETS]
    if unknown:
        raise ValueError(
            f"LoRA `targets` must be among {', '.join(ALL_TARGETS)}, but got unknown target(s) {', '.join(unknown)}"
        )
    names = tuple(dict.fromkeys(names))
    slices = [t for t in names if t in QKV_SLICES]
    if "qkv" in names and slices:
        raise ValueError(
            "LoRA `targets` must adapt each projection once (qkv already covers q, k and v), "
            f"but got targets=[{', '.join(names)}]"
        )
    return names


@dataclass(frozen=True)
class LoRASettings:
    """The LoRA settings of one model, checked on creation (see `apply_lora` for their meaning)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    rslora: bool = False
    variant: LoRAVariant = "lora"
    init: LoRAInit = "default"

    def __post_init__(self) -> None:
        check_adapter_args(self.rank, self.alpha, self.dropout, self.variant)
        if self.init not in INITS:
            raise ValueError(f"LoRA `init` must be one of {', '.join(INITS)}, but got init={self.init!r}")
        object.__setattr__(self, "targets", _normalise_targets(self.targets))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "rslora", bool(self.rslora))

    def check_width(self, n_embd: int) -> None:
        """The rank fits every target: r <= min(in, out) of its weight block in a GPT-2 of width `n_embd`."""
        for target in self.targets:
            in_dim, out_dim = target_shape(target, n_embd)
            if self.rank > min(in_dim, out_dim):
                raise ValueError(
                    f"LoRA `rank` must be <= each target's width min(in, out), but got rank={self.rank} > "
                    f"{min(in_dim, out_dim)} for target {target} ({in_dim} -> {out_dim})"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as `gpt.lora_config` and checkpoints keep them."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "rslora": self.rslora,
            "targets": list(self.targets),
            "variant": self.variant,
            "init": self.init,
        }
