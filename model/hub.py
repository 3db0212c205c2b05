"""`from_pretrained`: find Hugging Face GPT-2 files (hub or local folder), convert them, keep the last ones in memory.

A sweep runs many trials of the same model size in one process, so the converted state dict of the last model
loaded stays here (one entry): later `from_pretrained` calls copy from it and read nothing from disk. The cached
tensors are never handed out, so a trial cannot change them.

The hub is reached through `huggingface_hub.hf_hub_download`, which honours `HF_HOME`/`HF_HUB_CACHE` and
`HF_HUB_OFFLINE`; both are read when a model is loaded (not when `huggingface_hub` was imported), so a process may
set them late.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from model.gpt2 import CONV1D_WEIGHTS, GPT, GPTConfig

logger = logging.getLogger(__name__)

# nanoGPT's names for the four OpenAI checkpoints -> their hub repos
ALIASES: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Hugging Face keys that carry no weights: the causal-mask buffers of old checkpoints, the tied head, a HF
# classification head (ours is created fresh)
_SKIP = re.compile(r"(\.attn\.bias|\.attn\.masked_bias)$|^lm_head\.weight$|^score\.")

_cache: tuple[tuple[Any, ...], dict[str, Any], dict[str, torch.Tensor], dict[str, Any]] | None = None


def clear_cache() -> None:
    """Drop the in-memory base weights (e.g. before loading a much larger model in the same process)."""
    global _cache
    _cache = None


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "")
    return env.upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _hub_cache_dir() -> Path:
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _download(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id, filename, revision=revision, cache_dir=_hub_cache_dir(), local_files_only=_offline()
    )
    return Path(path)


def _fetch_from_hub(repo_id: str, revision: str | None, asked: str) -> tuple[Path, list[Path]]:
    """config.json and the safetensors file(s) of a hub repo, from the cache or downloaded."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    try:
        config_path = _download(repo_id, "config.json", revision)
        try:
            weights = [_download(repo_id, WEIGHTS_NAME, revision)]
        except (EntryNotFoundError, LocalEntryNotFoundError):
            index = json.loads(_download(repo_id, INDEX_NAME, revision).read_text())
            weights = [_download(repo_id, f, revision) for f in sorted(set(index["weight_map"].values()))]
    except RevisionNotFoundError:
        raise ValueError(
            f"hub repo {repo_id} has no revision {rev!r}: use a branch, tag or commit that exists, "
            f"but got revision={revision!r}"
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"no hub repo {repo_id!r} (or it is private): expected one of {', '.join(ALIASES)}, a hub repo id "
            f"or a local folder with config.json + {WEIGHTS_NAME}, but got name_or_path={asked!r}"
        ) from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1 forbids a download" if _offline() else "the hub could not be reached"
        raise FileNotFoundError(
            f"GPT-2 weights {repo_id!r} (revision {rev}) are not in the Hugging Face cache {_hub_cache_dir()} "
            f"and {why}: fetch them once with network access (`hf download {repo_id} config.json {WEIGHTS_NAME}"
            f"{' --revision ' + revision if revision else ''}`), or pass a local folder holding config.json + "
            f"{WEIGHTS_NAME} (name_or_path={asked!r})"
        ) from None
    except EntryNotFoundError:
        raise FileNotFoundError(
            f"hub repo {repo_id} (revision {rev}) has no config.json + {WEIGHTS_NAME}: it must be in Hugging "
            f"Face's GPT-2 format (name_or_path={asked!r})"
        ) from None
    return config_path, weights


def _local_files(folder: Path) -> tuple[Path, list[Path]]:
    config_path = folder / "config.json"
    if (folder / WEIGHTS_NAME).is_file():
        weights = [folder / WEIGHTS_NAME]
    elif (folder / INDEX_NAME).is_file():
        index = json.loads((folder / INDEX_NAME).read_text())
        weights = [folder / f for f in sorted(set(index["weight_map"].values()))]
    else:
        weights = []
    if not config_path.is_file() or not weights or not all(w.is_file() for w in weights):
        present = sorted(p.name for p in folder.iterdir())
        raise ValueError(
            f"a model folder must hold config.json + {WEIGHTS_NAME} (Hugging Face's GPT-2 format), but got "
            f"{folder} with files={present}"
        )
    return config_path, weights


def resolve(name_or_path: str | os.PathLike[str], revision: str | None = None) -> tuple[Path, list[Path], str]:
    """(config.json, weight files, a description of the source) for a model name, hub repo id or local folder."""
    asked = os.fspath(name_or_path)
    folder = Path(asked).expanduser()
    if folder.is_dir():
        if revision is not None:
            logger.warning("revision=%r is ignored for a local folder (%s)", revision, folder)
        return *_local_files(folder), str(folder.resolve())
    if asked.startswith((".", "/", "~")) or "\\" in asked:
        raise ValueError(f"a model folder must exist, but got name_or_path={asked!r} (no such folder)")
    repo_id = ALIASES.get(asked, asked)
    if not _REPO_ID.match(repo_id):
        raise ValueError(
            f"unknown model: expected one of {', '.join(ALIASES)}, a hub repo id (org/name) or a local folder with "
            f"config.json + {WEIGHTS_NAME}, but got name_or_path={asked!r}"
        )
    return *_fetch_from_hub(repo_id, revision, asked), repo_id


def config_from_hf(config_path: Path) -> dict[str, Any]:
    """GPTConfig's shape fields from a Hugging Face GPT-2 config.json; refuses variants we would compute wrongly."""
    raw = json.loads(config_path.read_text())
    if raw.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{config_path} must describe a GPT-2 model, but got model_type={raw.get('model_type')!r}")
    act = raw.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(
            f"{config_path}: activation_function must be gelu_new (GPT-2's tanh GELU), but got "
            f"activation_function={act!r}"
        )
    n_inner = raw.get("n_inner")
    if n_inner is not None and n_inner != 4 * raw["n_embd"]:
        raise ValueError(f"{config_path}: n_inner must be null or 4 * n_embd, but got n_inner={n_inner!r}")
    if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("scale_attn_weights") is False:
        raise ValueError(f"{config_path}: attention scaling must be GPT-2's 1/sqrt(head size)")
    return {
        "n_layer": raw["n_layer"],
        "n_head": raw["n_head"],
        "n_embd": raw["n_embd"],
        "vocab_size": raw["vocab_size"],
        "n_positions": raw.get("n_positions", raw.get("n_ctx", 1024)),
        "layer_norm_epsilon": raw.get("layer_norm_epsilon", 1e-5),
    }


def _expected_shapes(shape: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        gpt = GPT(GPTConfig(**shape))
    return {name: tuple(p.shape) for name, p in gpt.named_parameters()}


def convert_hf_state_dict(
    hf_state: dict[str, torch.Tensor], shape: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensors -> ours: `transformer.` prefix, Conv1D weights transposed, buffers dropped.

    Raises:
        ValueError: one line listing missing, unexpected and mis-shaped keys.
    """
    expected = _expected_shapes(shape)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in hf_state.items():
        name = key.removeprefix("transformer.")
        if _SKIP.search(name):
            continue
        name = f"transformer.{name}"
        if name.endswith(CONV1D_WEIGHTS) and tensor.dim() == 2:
            tensor = tensor.t().contiguous()
        state[name] = tensor
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{n}: got {tuple(state[n].shape)}, expected {expected[n]}"
        for n in sorted(set(state) & set(expected))
        if tuple(state[n].shape) != expected[n]
    ]
    if missing or unexpected or misshaped:

        def show(items: list[str]) -> str:
            return "[" + ", ".join(items[:6]) + (f", ... {len(items) - 6} more" if len(items) > 6 else "") + "]"

        parts = [
            f"{label} {show(items)}"
            for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", misshaped))
            if items
        ]
        dims = ", ".join(f"{k}={shape[k]}" for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions"))
        raise ValueError(f"checkpoint {source} does not fit GPT-2 with {dims}: {'; '.join(parts)}")
    return state


def _fingerprint(files: list[Path]) -> tuple[Any, ...]:
    return tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def load_base_weights(
    name_or_path: str | os.PathLike[str], revision: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(shape fields, converted state dict, source info) for `from_pretrained`; the state dict is shared, read-only.

    Hub models are keyed by (repo id, revision) and found in memory without a call to the hub; local folders by
    their files' paths, sizes and modification times.
    """
    global _cache
    asked = os.fspath(name_or_path)
    folder = Path(asked).expanduser()
    if folder.is_dir():
        config_path, weights, source = resolve(folder, revision)
        key: tuple[Any, ...] = ("local", *_fingerprint([config_path, *weights]))
    else:
        repo_id = ALIASES.get(asked, asked)
        key = ("hub", repo_id, revision or "main", str(_hub_cache_dir()))
        if _cache is not None and _cache[0] == key:
            logger.info("base weights of %s reused from memory", repo_id)
            return _cache[1], _cache[2], _cache[3]
        config_path, weights, source = resolve(asked, revision)
    if _cache is not None and _cache[0] == key:
        logger.info("base weights of %s reused from memory", source)
        return _cache[1], _cache[2], _cache[3]
    _cache = None  # free the previous model before reading the next
    start = time.perf_counter()
    shape = config_from_hf(config_path)
    hf_state: dict[str, torch.Tensor] = {}
    for w in weights:
        hf_state.update(load_file(w))
    state = convert_hf_state_dict(hf_state, shape, source)
    del hf_state
    info = {"name_or_path": asked, "source": source, "revision": revision}
    _cache = (key, shape, state, info)
    n = sum(t.numel() for t in state.values())
    logger.info("loaded %s (%.1fM parameters) in %.1fs", source, n / 1e6, time.perf_counter() - start)
    return shape, state, info


def from_pretrained(
    name_or_path: str | os.PathLike[str],
    num_classes: int | None = None,
    *,
    revision: str | None = None,
    dropout: float = 0.0,
) -> GPT:
    """GPT-2 weights from the hub (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `org/name`) or a local folder.

    The folder (or hub repo) holds Hugging Face's `config.json` + `model.safetensors`. The last loaded weights stay in
    memory, so later calls for the same model in this process read nothing from disk. With `num_classes` the body is
    loaded and a fresh `score` head is created.
    """
    GPTConfig(dropout=dropout, num_classes=num_classes)  # bad settings fail before any weights are read
    shape, state, source = load_base_weights(name_or_path, revision=revision)
    config = GPTConfig(**shape, dropout=dropout, num_classes=num_classes)
    with torch.device("meta"):  # no wasted random init: every tensor is overwritten below
        gpt = GPT(config)
    gpt.to_empty(device="cpu")
    gpt.tie_weights()
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name.startswith("score."):
                nn.init.normal_(p, mean=0.0, std=0.02)
            else:
                p.copy_(state[name])  # a copy: the cached tensors are never handed to a trial
    gpt.source = dict(source)
    return gpt
