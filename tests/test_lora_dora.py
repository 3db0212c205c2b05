"""DoRA (variant="dora") against PEFT's use_dora=True on GPT-2's Conv1D: counts, start, outputs, gradients, merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_refs import (
    ALL_FOUR,
    PEFT_NAMES,
    PEFT_TARGETS,
    TINY,
    copy_adapters_from_peft,
    hf_gpt2,
    peft_lora,
    peft_params,
    perturb_peft_adapters,
    random_ids,
    save_hf,
)
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, GPTConfig, apply_lora, count_parameters, from_pretrained, merge_lora
from model.lora import lora_adapters, lora_modules


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf(hf_gpt2(**TINY, seed=21), tmp_path_factory.mktemp("tiny_dora"))


def _peft_dora(folder: Path, rslora: bool = False, dropout: float = 0.0) -> torch.nn.Module:
    hf = GPT2LMHeadModel.from_pretrained(folder)
    return peft_lora(hf, 4, 8, PEFT_TARGETS[ALL_FOUR], use_dora=True, use_rslora=rslora, lora_dropout=dropout)


@pytest.mark.parametrize("targets", list(PEFT_TARGETS))
def test_trainable_count_equals_peft_for_gpt2_small(targets: tuple[str, ...]) -> None:
    with torch.device("meta"):
        ours = apply_lora(GPT(GPTConfig.from_preset("small")), rank=8, alpha=16, targets=targets, variant="dora")
        theirs = peft_lora(GPT2LMHeadModel(GPT2Config()), 8, 16, PEFT_TARGETS[targets], use_dora=True)
        plain = apply_lora(GPT(GPTConfig.from_preset("small")), rank=8, alpha=16, targets=targets)
    assert count_parameters(ours) == theirs.get_nb_trainable_parameters()
    # A and B as LoRA, plus one magnitude per output row of each adapted linear
    extra = 12 * (3 * 768) if targets == ("qkv",) else 12 * (3 * 768 + 768 + 4 * 768 + 768)
    assert count_parameters(ours)[0] == count_parameters(plain)[0] + extra


def test_start_magnitudes_equal_peft_and_the_model_is_the_base(tiny_folder: Path) -> None:
    base = from_pretrained(tiny_folder).eval()
    ours = apply_lora(from_pretrained(tiny_folder), rank=4, alpha=8, variant="dora").eval()
    theirs = peft_params(_peft_dora(tiny_folder))
    for name, adapter in lora_adapters(ours).items():
        expected = theirs[f"{name}.{PEFT_NAMES['lora_magnitude']}"]
        torch.testing.assert_close(adapter.lora_magnitude, expected, atol=1e-6, rtol=1e-6)
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), base(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rslora", [False, True])
def test_outputs_and_gradients_equal_peft_with_the_same_adapters(tiny_folder: Path, rslora: bool) -> None:
    peft_model = _peft_dora(tiny_folder, rslora)
    perturb_peft_adapters(peft_model)
    ours = apply_lora(from_pretrained(tiny_folder), rank=4, alpha=8, rslora=rslora, variant="dora")
    copy_adapters_from_peft(ours, peft_model)
    ids = random_ids(2, 10)
    ours(ids).square().mean().backward()
    peft_model(ids).logits.square().mean().backward()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), peft_model(ids).logits, atol=1e-5, rtol=0)
    theirs = peft_params(peft_model)
    for name, adapter in lora_adapters(ours).items():
        for mine in ("lora_a.weight", "lora_b.weight", "lora_magnitude"):
            expected = theirs[f"{name}.{PEFT_NAMES[mine]}"].grad
            torch.testing.assert_close(adapter.get_parameter(mine).grad, expected, atol=1e-6, rtol=1e-4)


def test_adapter_dropout_in_training_equals_peft_under_the_same_seed(tiny_folder: Path) -> None:
    """With dropout, PEFT computes DoRA's correction on the dropped input; ours does the same, draw for draw."""
    peft_model = _peft_dora(tiny_folder, dropout=0.3).train()
    perturb_peft_adapters(peft_model)
    ours = apply_lora(from_pretrained(tiny_folder), rank=4, alpha=8, dropout=0.3, variant="dora").train()
    copy_adapters_from_peft(ours, peft_model)
    ids = random_ids(2, 10)
    torch.manual_seed(5)
    mine = ours(ids)
    torch.manual_seed(5)
    theirs = peft_model(ids).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    torch.manual_seed(6)
    assert not torch.allclose(ours(ids), mine)  # dropout is really on


def test_merge_equals_peft_merge_and_unload(tiny_folder: Path) -> None:
    peft_model = _peft_dora(tiny_folder)
    perturb_peft_adapters(peft_model, seed=3)
    ours = apply_lora(from_pretrained(tiny_folder), rank=4, alpha=8, variant="dora").eval()
    copy_adapters_from_peft(ours, peft_model)
    names = list(lora_modules(ours))
    ids = random_ids(2, 10)
    with torch.no_grad():
        before = ours(ids)
        merge_lora(ours)
        merged_hf = peft_model.merge_and_unload().eval()
        torch.testing.assert_close(ours(ids), before, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(ids), merged_hf(ids).logits, atol=1e-5, rtol=0)
    hf_weights = dict(merged_hf.named_parameters())
    for name in names:  # Conv1D stores (in, out)
        mine = ours.get_submodule(name).weight
        torch.testing.assert_close(mine, hf_weights[f"{name}.weight"].t(), atol=1e-6, rtol=1e-5)
