"""GPT-2 from scratch with Hugging Face's names, LoRA adapters, block freezing and KV-cache generation.

from model import GPT, GPTConfig, apply_lora, freeze_blocks, count_parameters
gpt = GPT.from_pretrained("gpt2", num_classes=2)     # or GPT(GPTConfig.from_preset("tiny"))
apply_lora(gpt, rank=8, alpha=16)
freeze_blocks(gpt, 4)
"""

from model.checkpoint import export_hf, load_trainable, save_trainable
from model.freeze import count_parameters, freeze_blocks
from model.gpt2 import GPT, PRESETS, GPTConfig
from model.lora import LoRALinear, apply_lora, merge_lora

__all__ = [
    "GPT",
    "PRESETS",
    "GPTConfig",
    "LoRALinear",
    "apply_lora",
    "count_parameters",
    "export_hf",
    "freeze_blocks",
    "load_trainable",
    "merge_lora",
    "save_trainable",
]
