"""LoRA for GPT-2: adapters on whole linears or on the q, k, v slices of the fused attention projection, the DoRA
variant, PiSSA initialisation, rsLoRA scaling, LoRA+ learning rates, reversible merging.

    from model.lora import apply_lora, merge_lora, unmerge_lora, lora_param_groups
    apply_lora(gpt, rank=8, alpha=16, targets=["q", "v"], variant="dora", init="pissa")
    optimizer = torch.optim.AdamW(lora_param_groups(gpt, lr=2e-4, weight_decay=0.01, lr_ratio=16))

Layout: `settings` (targets and checks) ← `adapter` (one update, LoRA or DoRA) ← `layers` (frozen linears carrying
adapters) ← `pissa` ← `apply` (model-level functions) ← `groups` (optimizer groups); `packed` (several trials' adapters
over one shared base, `PackedGPT`) builds on `apply`. Parity with PEFT is tested in
tests/test_lora*.py.
"""

from model.lora.adapter import LoRAAdapter
from model.lora.apply import (
    MergedLoRA,
    adapter_state_dict,
    apply_lora,
    lora_adapters,
    lora_modules,
    merge_lora,
    pissa_state_dict,
    unmerge_lora,
    unwrap_lora,
)
from model.lora.groups import lora_param_groups, lora_plus_params
from model.lora.layers import AdaptedLinear, LoRALinear, LoRAQKVLinear
from model.lora.packed import PackedGPT
from model.lora.settings import (
    ALL_TARGETS,
    DEFAULT_TARGETS,
    INITS,
    QKV_SLICES,
    TARGETS,
    VARIANTS,
    LoRAInit,
    LoRASettings,
    LoRATarget,
    LoRAVariant,
    target_shape,
)

__all__ = [
    "ALL_TARGETS",
    "DEFAULT_TARGETS",
    "INITS",
    "QKV_SLICES",
    "TARGETS",
    "VARIANTS",
    "AdaptedLinear",
    "LoRAAdapter",
    "LoRAInit",
    "LoRALinear",
    "LoRAQKVLinear",
    "LoRASettings",
    "LoRATarget",
    "LoRAVariant",
    "MergedLoRA",
    "PackedGPT",
    "adapter_state_dict",
    "apply_lora",
    "lora_adapters",
    "lora_modules",
    "lora_param_groups",
    "lora_plus_params",
    "merge_lora",
    "pissa_state_dict",
    "target_shape",
    "unmerge_lora",
    "unwrap_lora",
]
