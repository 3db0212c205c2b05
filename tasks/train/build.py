"""The model a trial's config asks for: pretrained or random GPT-2, LoRA adapters, frozen blocks, on the device."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from tasks.train.runtime import Runtime

if TYPE_CHECKING:
    from model import GPT, GPTConfig
    from model.lora import LoRASettings


def model_preset(cfg: DictConfig) -> GPTConfig:
    """The size preset of `cfg.model` (n_layer, n_positions...), known before any weights are read."""
    from model import GPTConfig

    return GPTConfig.from_preset(cfg.model.preset)


def lora_settings(cfg: DictConfig) -> LoRASettings:
    """The `lora` node as `apply_lora` takes it (a trial alone and a packed one read it here, so they agree)."""
    from model.lora import LoRASettings

    lora = cfg.lora
    return LoRASettings(
        rank=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        targets=tuple(lora.targets),
        rslora=lora.rslora,
        variant=lora.variant,
        init=lora.init,
    )


def base_model(cfg: DictConfig, num_classes: int | None) -> GPT:
    """The GPT-2 of `cfg.model` on the CPU: pretrained weights, or random ones drawn from the global RNG (so from
    the trial's seed); a classification head when `num_classes` is set. A pack of trials shares one."""
    from model import GPT, GPTConfig, from_pretrained

    m = cfg.model
    if m.pretrained:
        if not m.hub_id:
            raise ValueError(f"model.pretrained=true needs model.hub_id, but got model.hub_id={m.hub_id!r}")
        return from_pretrained(m.hub_id, num_classes=num_classes, revision=m.revision, dropout=m.dropout)
    return GPT(GPTConfig.from_preset(m.preset, dropout=m.dropout, num_classes=num_classes))


def build_model(cfg: DictConfig, num_classes: int | None, runtime: Runtime) -> torch.nn.Module:
    """The model a trial trains: pretrained or random GPT-2, LoRA adapters, frozen blocks, on the device."""
    from common.allocator import maybe_tune_malloc
    from model import apply_lora, freeze_blocks

    if runtime.device.type == "cpu":
        maybe_tune_malloc()  # opt-in (LORASWEEP_MALLOC=tuned): see common/allocator.py and BENCHMARKS.md
    model = base_model(cfg, num_classes)
    if cfg.finetune.mode == "lora":
        lora = lora_settings(cfg)
        apply_lora(
            model,
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            targets=lora.targets,
            rslora=lora.rslora,
            variant=lora.variant,
            init=lora.init,
            pretrained=cfg.model.pretrained,  # PiSSA on a random base warns that its start is arbitrary
        )
    freeze_blocks(model, cfg.freeze.blocks)
    if cfg.trainer.grad_checkpointing:
        model.set_gradient_checkpointing(True)
    model.to(runtime.device)
    if cfg.trainer.compile:
        # compile the two entry points the tasks call; the module itself stays a plain GPT for checkpoints
        model.forward = torch.compile(model.forward)
        model.lm_loss = torch.compile(model.lm_loss)
    return model
