"""PiSSA (init="pissa") against PEFT's init_lora_weights="pissa": A, B, the residual base, outputs, gradients; on a
q/k/v slice, the SVD of that slice's own block; and the warning for a random base."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from model_refs import (
    ALL_FOUR,
    PEFT_NAMES,
    PEFT_TARGETS,
    TINY,
    hf_gpt2,
    peft_lora,
    peft_params,
    random_ids,
    save_hf,
)
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import GPT2LMHeadModel

from model import GPT, GPTConfig, apply_lora, from_pretrained
from model.lora import lora_adapters, lora_modules

EXACT = {"atol": 1e-6, "rtol": 1e-5}  # the same SVD on the same matrix: equal up to the last bits


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf(hf_gpt2(**TINY, seed=41), tmp_path_factory.mktemp("tiny_pissa"))


@pytest.mark.parametrize(("variant", "rslora"), [("lora", False), ("lora", True), ("dora", False)])
def test_start_equals_peft(tiny_folder: Path, variant: str, rslora: bool) -> None:
    peft_model = peft_lora(
        GPT2LMHeadModel.from_pretrained(tiny_folder),
        4,
        8,
        PEFT_TARGETS[ALL_FOUR],
        init_lora_weights="pissa",
        use_dora=variant == "dora",
        use_rslora=rslora,
    )
    ours = apply_lora(from_pretrained(tiny_folder), 4, 8, init="pissa", variant=variant, rslora=rslora)
    theirs = peft_params(peft_model)
    for name, module in lora_modules(ours).items():
        torch.testing.assert_close(module.weight, theirs[f"{name}.base_layer.weight"].t(), **EXACT)  # residual
        for mine in module.adapter_params():
            torch.testing.assert_close(module.get_parameter(mine), theirs[f"{name}.{PEFT_NAMES[mine]}"], **EXACT)
    ids = random_ids(2, 10)
    ours(ids).square().mean().backward()
    peft_model(ids).logits.square().mean().backward()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), peft_model(ids).logits, atol=1e-5, rtol=0)
        # the adapted model starts where the base model is
        torch.testing.assert_close(ours(ids), from_pretrained(tiny_folder)(ids), atol=1e-4, rtol=0)
    for name, module in lora_modules(ours).items():
        for mine in module.adapter_params():
            expected = theirs[f"{name}.{PEFT_NAMES[mine]}"].grad
            torch.testing.assert_close(module.get_parameter(mine).grad, expected, atol=1e-6, rtol=1e-4)


class _OneLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.proj.weight.copy_(weight)
            self.proj.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@pytest.mark.parametrize("slices", [("v",), ("q", "k")], ids="".join)
def test_a_slice_is_initialised_from_its_own_block(tiny_folder: Path, slices: tuple[str, ...]) -> None:
    base = from_pretrained(tiny_folder).transformer.h[1].attn.c_attn
    ours = apply_lora(from_pretrained(tiny_folder), 4, 8, targets=slices, init="pissa")
    c_attn = ours.transformer.h[1].attn.c_attn
    C = TINY["n_embd"]
    for i, s in enumerate(("q", "k", "v")):
        rows = slice(i * C, (i + 1) * C)
        if s not in slices:
            assert torch.equal(c_attn.weight[rows], base.weight[rows])  # untouched
            continue
        # the reference: PEFT's PiSSA on a plain linear holding only this slice's weight block
        one = _OneLinear(base.weight[rows].detach(), base.bias[rows].detach())
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], init_lora_weights="pissa")
        peft_one = get_peft_model(one, config)
        layer = peft_one.base_model.model.proj
        adapter = c_attn.get_submodule(s)
        torch.testing.assert_close(c_attn.weight[rows], layer.base_layer.weight, **EXACT)
        torch.testing.assert_close(adapter.lora_a.weight, layer.lora_A["default"].weight, **EXACT)
        torch.testing.assert_close(adapter.lora_b.weight, layer.lora_B["default"].weight, **EXACT)


def test_random_base_gets_one_warning_line(tiny_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="model.lora"):
        apply_lora(GPT(GPTConfig.from_preset("tiny", vocab_size=128)), 4, 8, init="pissa")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "randomly initialised base (pretrained=false)" in warnings[0] and "arbitrary" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="model.lora"):
        apply_lora(from_pretrained(tiny_folder), 4, 8, init="pissa")  # pretrained: read from the model
        apply_lora(GPT(GPTConfig.from_preset("tiny", vocab_size=128)), 4, 8, init="pissa", pretrained=True)
        apply_lora(GPT(GPTConfig.from_preset("tiny", vocab_size=128)), 4, 8)  # no PiSSA, nothing to say
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_pissa_buffers_are_the_start_and_stay_put_in_training(tiny_folder: Path) -> None:
    gpt = apply_lora(from_pretrained(tiny_folder), 4, 8, targets=["q", "fc"], init="pissa")
    adapters = lora_adapters(gpt)
    start = {n: (a.pissa_a0.clone(), a.pissa_b0.clone()) for n, a in adapters.items()}
    for a0, b0 in start.values():
        assert a0.abs().sum() > 0 and b0.abs().sum() > 0
    opt = torch.optim.AdamW([p for p in gpt.parameters() if p.requires_grad], lr=1e-2)
    gpt.lm_loss(random_ids(2, 8), random_ids(2, 8, seed=3)).backward()
    opt.step()
    for name, adapter in adapters.items():
        assert torch.equal(adapter.pissa_a0, start[name][0]) and torch.equal(adapter.pissa_b0, start[name][1])
        assert not torch.equal(adapter.lora_b.weight, start[name][1])
