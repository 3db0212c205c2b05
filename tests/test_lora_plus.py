"""lora_param_groups: LoRA+ learning rates as PEFT's create_loraplus_optimizer gives them, GPT-2's weight decay."""

from __future__ import annotations

import pytest
import torch
from model_refs import ALL_FOUR, PEFT_NAMES, PEFT_TARGETS, TINY, hf_gpt2, peft_lora
from peft.optimizers import create_loraplus_optimizer

from model import GPT, GPTConfig, apply_lora, freeze_blocks, lora_param_groups
from model.lora import lora_adapters

LR, RATIO = 1e-3, 16.0


def _lr_by_param(groups: list[dict]) -> dict[int, float]:
    return {id(p): g["lr"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_learning_rates_equal_peft_loraplus(variant: str) -> None:
    hf = hf_gpt2(**TINY, seed=61)
    peft_model = peft_lora(hf, 4, 8, PEFT_TARGETS[ALL_FOUR], use_dora=variant == "dora")
    theirs = create_loraplus_optimizer(peft_model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO)
    their_lr = {
        n.removeprefix("base_model.model."): lr
        for n, lr in ((n, _lr_by_param(theirs.param_groups).get(id(p))) for n, p in peft_model.named_parameters())
        if lr is not None
    }
    gpt = apply_lora(GPT(GPTConfig(**TINY)), 4, 8, variant=variant)
    ours = _lr_by_param(lora_param_groups(gpt, lr=LR, weight_decay=0.01, lr_ratio=RATIO))
    compared = 0
    for name, adapter in lora_adapters(gpt).items():
        for mine in adapter.adapter_params():
            assert ours[id(adapter.get_parameter(mine))] == pytest.approx(their_lr[f"{name}.{PEFT_NAMES[mine]}"])
            compared += 1
    assert compared == len(their_lr)  # every tensor PEFT trains, and no other
    assert set(ours.values()) == {LR, LR * RATIO}


def test_groups_carry_decay_and_the_lr_scale_a_schedule_needs() -> None:
    gpt = apply_lora(GPT(GPTConfig(**TINY, num_classes=3)), 4, 8, targets=["q", "v"], variant="dora")
    groups = lora_param_groups(gpt, lr=LR, weight_decay=0.1, lr_ratio=RATIO)
    by_key = {(g["lr_scale"], g["weight_decay"]): g for g in groups}
    names = {id(p): n for n, p in gpt.named_parameters()}
    members = {
        key: {names[id(p)].rsplit(".", 2)[-2] + "." + names[id(p)].rsplit(".", 1)[-1] for p in g["params"]}
        for key, g in by_key.items()
    }
    assert members == {
        (1.0, 0.1): {"lora_a.weight", "score.weight"},  # A and the head: decayed, at lr
        (RATIO, 0.1): {"lora_b.weight"},  # B: decayed, at ratio x lr
        (RATIO, 0.0): {"v.lora_magnitude", "q.lora_magnitude"},  # DoRA's magnitudes: 1-D, at B's rate
    }
    assert all(g["lr"] == pytest.approx(LR * g["lr_scale"]) for g in groups)
    # a schedule keeps the ratio by scaling every group
    opt = torch.optim.AdamW(groups)
    for g in opt.param_groups:
        g["lr"] = 5e-4 * g["lr_scale"]
    assert {g["lr"] for g in opt.param_groups} == {5e-4, 5e-4 * RATIO}


def test_ratio_one_is_the_plain_decay_split() -> None:
    """Without LoRA+ (or without LoRA) the groups are GPT-2's: matrices decayed; 1-D tensors and embeddings not."""
    gpt = freeze_blocks(GPT(GPTConfig(**TINY, num_classes=2)), 0)
    groups = lora_param_groups(gpt, lr=LR, weight_decay=0.1)
    assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(0.1, 1.0), (0.0, 1.0)]
    names = {id(p): n for n, p in gpt.named_parameters()}
    undecayed = {names[id(p)] for p in groups[1]["params"]}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.bias"} <= undecayed
    assert all(names[id(p)].endswith("weight") and p.dim() == 2 for p in groups[0]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(gpt.parameters()))


@pytest.mark.parametrize("ratio", [0, -2.0, True, "16"])
def test_bad_ratio(ratio: object) -> None:
    with pytest.raises(ValueError, match=r"lr_ratio` must be a number > 0 \(1 = plain LoRA\), but got lr_ratio="):
        lora_param_groups(GPT(GPTConfig(**TINY)), lr=LR, weight_decay=0.0, lr_ratio=ratio)
