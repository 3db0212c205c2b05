"""Which trials can share one base model: the pack key of a trial's config, or the reason it runs alone.

A pack shares the frozen base weights, the tokenized data and the device, so its members must agree on everything
that builds them: the model node (name, size, checkpoint, revision, model dropout), the task node (data, splits,
lengths), the fine-tuning mode, device, precision and gradient checkpointing. A randomly initialised base is drawn
from the trial's seed, so then `trainer.seed` is shared too. Everything else is the member's own: LoRA settings
(rank, alpha, dropout, targets, variant, rsLoRA, LoRA+), frozen blocks, optimizer, learning rate, schedule, batch
size, gradient accumulation, epochs, steps, evaluation, patience, seed (pretrained base), checkpointing, reuse.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# the config keys a pack's members share (see the module docstring)
SHARED_KEYS = ("model", "task", "finetune.mode", "trainer.device", "trainer.precision", "trainer.grad_checkpointing")


def alone_reason(cfg: DictConfig) -> str | None:
    """Why a trial cannot join a pack (one line naming the setting), or None when it can."""
    if cfg.finetune.mode != "lora":
        return f"finetune={cfg.finetune.mode} trains the base weights, which a pack shares"
    if cfg.lora.init == "pissa":
        return "lora.init=pissa replaces the base weight by its residual, so the trial has a base of its own"
    if cfg.trainer.get("compile"):
        return "trainer.compile=true compiles one model's forward, not a pack's"
    return None


def shared_settings(cfg: DictConfig) -> dict[str, Any]:
    """The values a trial shares with the other members of its pack."""
    shared = {key: _plain(OmegaConf.select(cfg, key)) for key in SHARED_KEYS}
    if not cfg.model.get("pretrained"):
        shared["trainer.seed"] = cfg.trainer.seed  # a random base is drawn from the seed
    return shared


def pack_key(cfg: DictConfig) -> str | None:
    """Trials with the same key can train in one pack; None for a trial that runs alone (`alone_reason`)."""
    if alone_reason(cfg) is not None:
        return None
    text = json.dumps(shared_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(leader: DictConfig, cfg: DictConfig) -> list[str]:
    """`key: leader's value != this one's` for each shared setting on which `cfg` differs from the leader."""
    mine, theirs = shared_settings(leader), shared_settings(cfg)
    keys = sorted(set(mine) | set(theirs))
    return [f"{k}: {mine.get(k)!r} != {theirs.get(k)!r}" for k in keys if mine.get(k) != theirs.get(k)]


def _plain(value: Any) -> Any:
    if OmegaConf.is_config(value):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:  # an interpolation only a Hydra run resolves
            return OmegaConf.to_container(value, resolve=False)
    return value
