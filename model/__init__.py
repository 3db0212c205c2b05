"""GPT-2 from scratch with Hugging Face's names, LoRA adapters, block freezing and KV-cache generation.

from model import GPT, GPTConfig, apply_lora, freeze_blocks, from_pretrained, generate
gpt = from_pretrained("gpt2", num_classes=2)     # or GPT(GPTConfig.from_preset("tiny"))
apply_lora(gpt, rank=8, alpha=16, targets=["q", "v"])
freeze_blocks(gpt, 4)

Imports go one way: `gpt2` (with `lm_head`) ← `hub`, `lora`, `decode` ← `generate`, `freeze` ← `checkpoint`.
"""

from model.checkpoint import export_hf, load_trainable, save_trainable
from model.freeze import freeze_blocks
from model.generate import generate
from model.gpt2 import GPT, PRESETS, GPTConfig, count_parameters
from model.hub import from_pretrained
from model.lora import (
    LoRALinear,
    LoRAQKVLinear,
    apply_lora,
    lora_param_groups,
    merge_lora,
    unmerge_lora,
)

__all__ = [
    "GPT",
    "PRESETS",
    "GPTConfig",
    "LoRALinear",
    "LoRAQKVLinear",
    "apply_lora",
    "count_parameters",
    "export_hf",
    "freeze_blocks",
    "from_pretrained",
    "generate",
    "load_trainable",
    "lora_param_groups",
    "merge_lora",
    "save_trainable",
    "unmerge_lora",
]
