"""Checkpoints: the trainable tensors only (LoRA + head, or everything trained in full fine-tuning), and a merged
export in Hugging Face's GPT-2 format.

A trainable checkpoint is a folder with `trainable.safetensors` (tensors by their model names) and `trainable.json`
(model shape, base weights' source, LoRA settings, frozen blocks, the caller's config). Rebuild the base model
(`from_pretrained` or `GPT(config)`) and `load_trainable` re-applies the same freezing and LoRA before copying.
A PiSSA model's base weights are residuals: its checkpoint also holds each adapter's starting factors
(`pissa_a0`, `pissa_b0`), from which `load_trainable` rebuilds the residual base exactly, without an SVD.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from model.freeze import freeze_blocks
from model.gpt2 import CONV1D_WEIGHTS
from model.lora import adapter_state_dict, apply_lora, lora_modules, pissa_state_dict

if TYPE_CHECKING:
    from model.gpt2 import GPT

logger = logging.getLogger(__name__)

TENSORS_NAME = "trainable.safetensors"
META_NAME = "trainable.json"
FORMAT = "lorasweep.trainable/1"
_SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions", "num_classes")


def save_trainable(gpt: GPT, path: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """Write the tensors that require grad (plus how to rebuild the model around them) to folder `path`.

    `config` is stored as given (make it plain JSON, e.g. `OmegaConf.to_container(cfg, resolve=True)`, and keep
    secrets out of it). Returns the folder.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous().cpu() for n, p in gpt.named_parameters() if p.requires_grad}
    tensors.update({n: t.contiguous().cpu() for n, t in pissa_state_dict(gpt).items()})
    if not tensors:
        raise ValueError("save_trainable needs a model with trainable tensors, but got one with none")
    meta = {
        "format": FORMAT,
        "model": gpt.config.to_dict(),
        "base": gpt.source,
        "lora": gpt.lora_config,
        "frozen_blocks": gpt.frozen_blocks,
        "tensors": sorted(tensors),
        "config": dict(config) if config is not None else None,
    }
    save_file(tensors, folder / TENSORS_NAME, metadata={"format": "pt"})
    (folder / META_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    n = sum(t.numel() for t in tensors.values())
    logger.info("saved %d trainable tensors (%s values) to %s", len(tensors), f"{n:,}", folder)
    return folder


def _check_same_model(gpt: GPT, meta: Mapping[str, Any], folder: Path) -> None:
    saved = meta.get("model") or {}
    for name in _SHAPE_FIELDS:
        ours = getattr(gpt.config, name)
        if name in saved and saved[name] != ours:
            raise ValueError(
                f"checkpoint {folder} was saved from a model with {name}={saved[name]}, "
                f"but got a model with {name}={ours}"
            )


# what a checkpoint written before a setting existed means by it
_LORA_DEFAULTS = {"variant": "lora", "init": "default"}


def _check_same_lora(gpt: GPT, saved: Mapping[str, Any], folder: Path) -> None:
    ours = gpt.lora_config or {}
    saved = {**_LORA_DEFAULTS, **saved}
    for name in ("rank", "alpha", "rslora", "targets", "variant", "init"):
        if name in saved and ours.get(name) != saved[name]:
            raise ValueError(
                f"checkpoint {folder} has LoRA {name}={saved[name]!r}, "
                f"but got a model with LoRA {name}={ours.get(name)!r}"
            )


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    files = [folder / TENSORS_NAME, folder / META_NAME]
    if not all(f.is_file() for f in files):
        raise FileNotFoundError(
            f"a trainable checkpoint folder must hold {TENSORS_NAME} + {META_NAME}, but got {folder}"
        )
    meta = json.loads(files[1].read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{files[1]} must have format={FORMAT!r}, but got format={meta.get('format')!r}")
    return meta, load_file(files[0])


def _set_up_like(gpt: GPT, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], folder: Path) -> None:
    """Freeze and apply LoRA as recorded, when the model lacks them; PiSSA from the saved starting factors."""
    k = int(meta.get("frozen_blocks") or 0)
    if k > gpt.frozen_blocks:
        freeze_blocks(gpt, k)
    lora = meta.get("lora")
    if not lora:
        return
    if not lora_modules(gpt):
        lora = {**_LORA_DEFAULTS, **lora}
        start = {n: t for n, t in tensors.items() if n.endswith((".pissa_a0", ".pissa_b0"))}
        apply_lora(
            gpt,
            lora["rank"],
            lora["alpha"],
            lora["dropout"],
            lora["targets"],
            lora["rslora"],
            variant=lora["variant"],
            init=lora["init"],
            pissa_start=start if lora["init"] == "pissa" else None,
        )
    _check_same_lora(gpt, meta["lora"], folder)


def _check_tensors(expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = [
        f"{n}: got {tuple(tensors[n].shape)}, expected {tuple(expected[n].shape)}"
        for n in sorted(set(expected) & set(tensors))
        if tensors[n].shape != expected[n].shape
    ]
    if missing or unexpected or misshaped:
        parts = [
            f"{label} {items[:6]}{f' ... {len(items) - 6} more' if len(items) > 6 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if items
        ]
        raise ValueError(f"checkpoint {path} does not fit the model's trainable tensors: {'; '.join(parts)}")


def load_trainable(gpt: GPT, path: str | Path) -> dict[str, Any] | None:
    """Copy a `save_trainable` folder into `gpt` (a base model, or one already set up the same way).

    Freezing and LoRA recorded in the checkpoint are applied first when the model lacks them (a PiSSA model's
    residual base from the saved starting factors). Returns the `config` saved with it.

    Raises:
        FileNotFoundError: the folder lacks trainable.safetensors or trainable.json.
        ValueError: a different model shape or LoRA setting, a PiSSA start that differs from the model's own, or
            missing, unexpected or mis-shaped tensors.
    """
    folder = Path(path)
    meta, tensors = _read(folder)
    _check_same_model(gpt, meta, folder)
    _set_up_like(gpt, meta, tensors, folder)
    params = {n: p for n, p in gpt.named_parameters() if p.requires_grad}
    start = pissa_state_dict(gpt)
    _check_tensors({**params, **start}, tensors, folder / TENSORS_NAME)
    for name, t in start.items():
        if not torch.allclose(t, tensors[name].to(t), rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"checkpoint {folder} was trained from another PiSSA start ({name} differs): load it into the base "
                "model alone, without apply_lora, so the saved start is used"
            )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
    logger.info("loaded %d trainable tensors from %s", len(tensors), folder)
    return meta.get("config")


def merged_state_dict(gpt: GPT) -> dict[str, torch.Tensor]:
    """Our parameters with every LoRA update folded in (the model itself is left as it is); adapters dropped."""
    adapted = {f"{name}.weight": m for name, m in lora_modules(gpt).items()}
    adapter_names = set(adapter_state_dict(gpt))
    state = {}
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name in adapter_names:
                continue
            state[name] = adapted[name].merged_weight() if name in adapted else p.detach()
    return state


def hf_config(gpt: GPT, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A Hugging Face GPT-2 `config.json` for this model's shape."""
    c = gpt.config
    config: dict[str, Any] = {
        "model_type": "gpt2",
        "architectures": ["GPT2ForSequenceClassification" if c.num_classes else "GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.n_positions,
        "n_ctx": c.n_positions,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "use_cache": True,
    }
    if c.num_classes:
        names = list(class_names) if class_names is not None else [f"LABEL_{i}" for i in range(c.num_classes)]
        if len(names) != c.num_classes:
            raise ValueError(
                f"`class_names` must have num_classes={c.num_classes} entries, but got {len(names)}: {names}"
            )
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
        config["label2id"] = {n: i for i, n in enumerate(names)}
        # HF reads the class logits at the last token that is not pad_token_id; <|endoftext|> pads GPT-2 batches
        config["pad_token_id"] = 50256
    return config


def export_hf(gpt: GPT, folder: str | Path, *, class_names: Sequence[str] | None = None) -> Path:
    """Write a merged model as Hugging Face GPT-2 (`config.json` + `model.safetensors`); returns the folder.

    `transformers.GPT2LMHeadModel.from_pretrained(folder)` loads it (a classifier also loads as
    `GPT2ForSequenceClassification`, `score` included). LoRA updates are folded in; the model is not changed.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in merged_state_dict(gpt).items():
        if name == "lm_head.weight":  # tied to wte
            continue
        if name.endswith(CONV1D_WEIGHTS):
            t = t.t()
        tensors[name] = t.contiguous().cpu()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(gpt, class_names), indent=2) + "\n")
    logger.info("exported a merged Hugging Face GPT-2 to %s", out)
    return out
