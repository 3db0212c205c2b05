"""Reference models for the model tests: Hugging Face GPT-2s with random, non-trivial weights, saved the two ways
our loader reads them (a `save_pretrained` folder and a hand-populated hub cache)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

# a tiny GPT-2 (our `tiny` preset) and GPT-2 small's widths cut to two layers
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64}
SMALL2 = {"n_layer": 2, "n_head": 12, "n_embd": 768}


def hf_gpt2(n_layer: int, n_head: int, n_embd: int, seed: int = 0, **config: object) -> GPT2LMHeadModel:
    """A random `GPT2LMHeadModel` in eval mode; biases and LayerNorms are perturbed so their loading is tested."""
    torch.manual_seed(seed)
    hf_config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config
    )
    model = GPT2LMHeadModel(hf_config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def save_hf(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def populate_hub_cache(hub_cache: Path, repo_id: str, src: Path, commit: str | None = None) -> str:
    """Lay out `src`'s files as huggingface_hub's cache does: blobs, a snapshot of symlinks, refs/main."""
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def random_ids(batch: int, length: int, vocab: int = 50257, seed: int = 1) -> torch.Tensor:
    """Token ids that avoid <|endoftext|> (50256), so it can serve as padding."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab - 1, (batch, length), generator=g)


# PEFT's module names for our whole-linear targets (PEFT matches by suffix: "c_proj" hits attn.c_proj and mlp.c_proj)
PEFT_TARGETS = {("qkv",): ["c_attn"], ("qkv", "attn_proj", "fc", "mlp_proj"): ["c_attn", "c_proj", "c_fc"]}
ALL_FOUR = ("qkv", "attn_proj", "fc", "mlp_proj")


def peft_lora(model: torch.nn.Module, rank: int, alpha: float, modules: list[str], **config: object) -> torch.nn.Module:
    """`get_peft_model` with LoRA on `modules` of a transformers GPT-2 (Conv1D, so fan_in_fan_out), dropout 0."""
    import warnings

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=modules, fan_in_fan_out=True, **{"lora_dropout": 0.0, **config}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, lora)


def peft_params(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """PEFT's parameters under our model names (`transformer.h.0.attn.c_attn.lora_A.default.weight`, ...)."""
    return {n.removeprefix("base_model.model."): p for n, p in peft_model.named_parameters()}


# our adapter tensor names -> PEFT's, relative to the adapted module
PEFT_NAMES = {
    "lora_a.weight": "lora_A.default.weight",
    "lora_b.weight": "lora_B.default.weight",
    "lora_magnitude": "lora_magnitude_vector.default.weight",
}


def copy_adapters_from_peft(ours: torch.nn.Module, peft_model: torch.nn.Module) -> None:
    """Our whole-linear adapters take PEFT's A, B (and DoRA magnitude) values."""
    from model.lora import lora_adapters

    theirs = peft_params(peft_model)
    with torch.no_grad():
        for name, adapter in lora_adapters(ours).items():
            for mine in adapter.adapter_params():
                adapter.get_parameter(mine).copy_(theirs[f"{name}.{PEFT_NAMES[mine]}"])


def perturb_peft_adapters(peft_model: torch.nn.Module, seed: int = 0) -> None:
    """A trained-looking adapter: B (and DoRA's magnitude) away from PEFT's start."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
            elif "lora_magnitude" in name:
                p.mul_(1 + 0.1 * torch.randn_like(p))
