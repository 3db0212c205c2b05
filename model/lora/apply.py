"""Model-level LoRA: `apply_lora`, `merge_lora` / `unmerge_lora`, and the adapters' tensors by name.

Free functions over a `model.GPT`, as torchtune's peft/_utils.py: the layers (`model.lora.layers`) know nothing of
the model, and the model knows nothing of LoRA beyond the `lora_config` / `lora_merged` attributes these set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from model.gpt2 import count_parameters
from model.lora.adapter import LoRAAdapter
from model.lora.layers import AdaptedLinear, LoRALinear, LoRAQKVLinear
from model.lora.pissa import init_pissa, pissa_start, restore_pissa
from model.lora.settings import (
    DEFAULT_TARGETS,
    QKV_SLICES,
    TARGETS,
    LoRAInit,
    LoRASettings,
    LoRAVariant,
)

if TYPE_CHECKING:
    from model.gpt2 import GPT

logger = logging.getLogger(__name__)


@dataclass
class MergedLoRA:
    """What `merge_lora` set aside for `unmerge_lora`: the settings and the adapted modules by name."""

    config: dict[str, Any]
    modules: dict[str, nn.Module]


def lora_modules(gpt: nn.Module) -> dict[str, nn.Module]:
    """Every adapted linear (`LoRALinear`, `LoRAQKVLinear`) in the model, by module name."""
    return {name: m for name, m in gpt.named_modules() if isinstance(m, AdaptedLinear)}


def lora_adapters(gpt: nn.Module) -> dict[str, LoRAAdapter]:
    """Every adapter by name: a `LoRALinear` is its own adapter; a `LoRAQKVLinear`'s are `<name>.q`, `.k`, `.v`."""
    out = {}
    for name, module in lora_modules(gpt).items():
        for sub, adapter, _ in module.adapters():
            out[f"{name}.{sub}" if sub else name] = adapter
    return out


def adapter_state_dict(gpt: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' trainable tensors by their model names (e.g. `transformer.h.0.attn.c_attn.lora_a.weight`)."""
    return {
        f"{name}.{p}": adapter.get_parameter(p).detach()
        for name, adapter in lora_adapters(gpt).items()
        for p in adapter.adapter_params()
    }


def pissa_state_dict(gpt: nn.Module) -> dict[str, torch.Tensor]:
    """PiSSA's starting factors by model name (`<adapter>.pissa_a0`, `.pissa_b0`): what rebuilds the residual base."""
    return {
        f"{name}.{buf}": t.detach()
        for name, adapter in lora_adapters(gpt).items()
        for buf, t in pissa_start(adapter).items()
    }


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _wrap_block(block: nn.Module, settings: LoRASettings) -> None:
    """Replace the block's target linears by adapted ones, at PEFT's default start."""
    kwargs = {
        "rank": settings.rank,
        "alpha": settings.alpha,
        "dropout": settings.dropout,
        "rslora": settings.rslora,
        "variant": settings.variant,
    }
    for target in settings.targets:
        if target in TARGETS:
            path = TARGETS[target]
            _set_module(block, path, LoRALinear.from_linear(block.get_submodule(path), **kwargs))
    slices = tuple(t for t in settings.targets if t in QKV_SLICES)
    if slices:
        path = TARGETS["qkv"]
        _set_module(block, path, LoRAQKVLinear.from_linear(block.get_submodule(path), slices, **kwargs))


def _initialise_pissa(gpt: GPT, start: Mapping[str, torch.Tensor] | None) -> None:
    """PiSSA for every adapter (from an SVD, or from saved starting factors), then DoRA's magnitudes again from the
    new W and ΔW, as PEFT does."""
    for name, module in lora_modules(gpt).items():
        for sub, adapter, rows in module.adapters():
            weight = module.weight[rows]
            if start is not None:
                key = f"{name}.{sub}" if sub else name
                restore_pissa(adapter, weight, start[f"{key}.pissa_a0"], start[f"{key}.pissa_b0"])
            else:
                init_pissa(adapter, weight)
            adapter.init_magnitude(weight)


def _adapter_names(gpt: GPT, settings: LoRASettings) -> list[str]:
    """The names `lora_adapters` will have once `settings` are applied to `gpt`."""
    names = []
    for i in range(gpt.frozen_blocks, gpt.config.n_layer):
        for target in settings.targets:
            path = TARGETS[target] if target in TARGETS else f"{TARGETS['qkv']}.{target}"
            names.append(f"transformer.h.{i}.{path}")
    return names


def _check_model(gpt: GPT, settings: LoRASettings, start: Mapping[str, torch.Tensor] | None) -> None:
    """What `settings` cannot check alone: the rank against the model's widths, adapters already there, PiSSA's
    saved start."""
    settings.check_width(gpt.config.n_embd)
    if lora_modules(gpt) or gpt.lora_merged is not None:
        raise ValueError("apply_lora must run once per model, but got a model that already has LoRA adapters")
    if start is None:
        return
    if settings.init != "pissa":
        raise ValueError(f"`pissa_start` needs init='pissa', but got init={settings.init!r}")
    missing = [n for n in _adapter_names(gpt, settings) if f"{n}.pissa_a0" not in start or f"{n}.pissa_b0" not in start]
    if missing:
        raise ValueError(
            f"`pissa_start` must hold pissa_a0 and pissa_b0 of every adapter, but got none for {', '.join(missing[:3])}"
            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        )


def _warn_if_random(gpt: GPT, pretrained: bool | None) -> None:
    if not (gpt.source is not None if pretrained is None else pretrained):
        logger.warning(
            "LoRA init=pissa on a randomly initialised base (pretrained=false): its singular vectors carry no "
            "learned structure, so the PiSSA start is arbitrary"
        )


def apply_lora(
    gpt: GPT,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: str | Iterable[str] = DEFAULT_TARGETS,
    rslora: bool = False,
    *,
    variant: LoRAVariant = "lora",
    init: LoRAInit = "default",
    pretrained: bool | None = None,
    pissa_start: Mapping[str, torch.Tensor] | None = None,
) -> GPT:
    """Freeze the base model and put LoRA adapters on the target linears of every unfrozen block.

    LoRA (Hu et al. 2021, arXiv:2106.09685): W + (alpha / r) · B A with A Kaiming-uniform and B = 0, as PEFT.

    Args:
        gpt: the model; blocks frozen by `freeze_blocks` get no adapters.
        rank: r >= 1, at most each target's width min(in, out).
        alpha: scale numerator (> 0): the update is scaled by alpha / r.
        dropout: dropout on the adapters' input, in [0, 1).
        targets: any of `q`, `k`, `v` (slices of the fused attn.c_attn's output, one adapter each; [q, v] is the
            LoRA paper's setting), `qkv` (attn.c_attn whole, as PEFT adapts it; not together with q/k/v),
            `attn_proj` (attn.c_proj), `fc` (mlp.c_fc), `mlp_proj` (mlp.c_proj).
        rslora: scale by alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023, arXiv:2312.03732).
        variant: `lora`, or `dora` (DoRA, Liu et al. 2024, arXiv:2402.09353): a trainable magnitude per output row
            times the normalised direction of W + ΔW; PEFT's `use_dora=True`.
        init: `default` (PEFT's), or `pissa` (PiSSA, Meng et al. 2024, arXiv:2404.02948): A and B from the top-r
            singular vectors of each adapted weight block, the base keeping the residual; PEFT's
            `init_lora_weights="pissa"`. On a randomly initialised base the singular vectors mean nothing: a
            warning says so.
        pretrained: whether the base weights are pretrained; None reads it from the model (`from_pretrained` sets
            `gpt.source`). Only PiSSA's warning uses it.
        pissa_start: PiSSA's starting factors by name (`pissa_state_dict` of the model that was saved): the residual
            is rebuilt from them instead of a new SVD. `model.checkpoint.load_trainable` passes it.

    Raises:
        ValueError: one line for a bad rank, alpha, dropout, variant or init, an unknown or overlapping target, a
            rank above a target's width, or adapters already applied; nothing is changed before it.
    """
    settings = LoRASettings(rank, alpha, dropout, targets, rslora, variant, init)  # type: ignore[arg-type]
    _check_model(gpt, settings, pissa_start)
    if init == "pissa" and pissa_start is None:
        _warn_if_random(gpt, pretrained)
    gpt.requires_grad_(False)
    for block in gpt.transformer.h[gpt.frozen_blocks :]:
        _wrap_block(block, settings)
    if settings.init == "pissa":
        _initialise_pissa(gpt, pissa_start)
    if gpt.score is not None:
        gpt.score.requires_grad_(True)
    gpt.lora_config = settings.to_dict()
    trainable, total = count_parameters(gpt)
    logger.info(
        "LoRA %s: %s trainable of %s parameters (%.3f%%)",
        " ".join(f"{k}={v}" for k, v in gpt.lora_config.items()),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return gpt


def unwrap_lora(block: nn.Module) -> int:
    """Merge and remove the adapters inside `block` for good (used for frozen blocks); returns how many modules."""
    found = [(name, m) for name, m in block.named_modules() if isinstance(m, AdaptedLinear)]
    for name, m in found:
        _set_module(block, name, m.to_linear())
    return len(found)


def merge_lora(gpt: GPT) -> GPT:
    """Fold every adapter into its base weight and put plain `nn.Linear`s back: a plain GPT-2 again, as fast.

    The adapted modules are set aside (`gpt.lora_merged`, not parameters of the model), so `unmerge_lora` can
    undo it; a model without adapters is returned unchanged.
    """
    modules = lora_modules(gpt)
    if not modules:
        return gpt
    for name, module in modules.items():
        _set_module(gpt, name, module.to_linear())
    gpt.lora_merged = MergedLoRA(config=gpt.lora_config or {}, modules=modules)
    gpt.lora_config = None
    return gpt


def unmerge_lora(gpt: GPT) -> GPT:
    """Undo `merge_lora`: take each adapter's update back out of its base weight and put the adapters back.

    Works for every variant (for DoRA with the row norms saved at merge time). The weights are the pre-merge ones
    within float rounding; the adapters keep their values and trainable flags.

    Raises:
        ValueError: the model was not merged by `merge_lora`.
    """
    stash: MergedLoRA | None = gpt.lora_merged
    if stash is None:
        raise ValueError("unmerge_lora needs a model merged by merge_lora, but got one with no merged adapters")
    for name, module in stash.modules.items():
        plain = gpt.get_submodule(name)
        module.weight, module.bias = plain.weight, plain.bias  # the tensors in the model now (moved or cast since)
        for _, adapter, _ in module.adapters():
            adapter.to(plain.weight.device, plain.weight.dtype)
        module.unmerge()
        _set_module(gpt, name, module)
    gpt.lora_config, gpt.lora_merged = stash.config, None
    return gpt
