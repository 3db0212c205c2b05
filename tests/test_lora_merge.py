"""merge_lora / unmerge_lora for every variant: merged = unmerged outputs, unmerge gives back the adapters and the
weights, and a merged export loads in transformers with the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_refs import TINY, hf_gpt2, random_ids, save_hf
from torch import nn
from transformers import GPT2LMHeadModel

from model import GPT, apply_lora, export_hf, from_pretrained, merge_lora, unmerge_lora
from model.lora import lora_adapters, lora_modules

VARIANTS = {
    "lora": {},
    "rslora": {"rslora": True},
    "dora": {"variant": "dora"},
    "pissa": {"init": "pissa"},
    "q-v": {"targets": ["q", "v"]},
    "q-v-fc-dora-pissa": {"targets": ["q", "v", "fc"], "variant": "dora", "init": "pissa"},
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf(hf_gpt2(**TINY, seed=51), tmp_path_factory.mktemp("tiny_merge"))


def _trained(folder: Path, kwargs: dict) -> GPT:
    gpt = apply_lora(from_pretrained(folder), rank=4, alpha=8, **kwargs)
    torch.manual_seed(8)
    with torch.no_grad():  # stand-in for training
        for adapter in lora_adapters(gpt).values():
            adapter.lora_b.weight.normal_(0, 0.1)
            if adapter.lora_magnitude is not None:
                adapter.lora_magnitude.mul_(1 + 0.1 * torch.randn_like(adapter.lora_magnitude))
    return gpt.eval()


@pytest.mark.parametrize("kwargs", VARIANTS.values(), ids=VARIANTS.keys())
def test_unmerge_gives_back_the_adapters_and_the_weights(tiny_folder: Path, kwargs: dict) -> None:
    gpt = _trained(tiny_folder, kwargs)
    names, config = sorted(lora_modules(gpt)), dict(gpt.lora_config)
    before = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    trainable = {n for n, p in gpt.named_parameters() if p.requires_grad}
    ids = random_ids(2, 11)
    with torch.no_grad():
        expected = gpt(ids)
        merge_lora(gpt)
        assert not lora_modules(gpt) and gpt.lora_config is None
        assert all(type(gpt.get_submodule(n)) is nn.Linear for n in names)
        torch.testing.assert_close(gpt(ids), expected, atol=1e-5, rtol=0)
        unmerge_lora(gpt)
        torch.testing.assert_close(gpt(ids), expected, atol=1e-5, rtol=0)
    assert sorted(lora_modules(gpt)) == names and gpt.lora_config == config
    assert {n for n, p in gpt.named_parameters() if p.requires_grad} == trainable
    for name, p in gpt.named_parameters():
        torch.testing.assert_close(p, before[name], atol=1e-6, rtol=1e-5, msg=name)
    gpt.train().lm_loss(ids, ids).backward()  # and it trains on
    assert all(p.grad is not None for p in gpt.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="needs a model merged by merge_lora, but got one with no merged adapters"):
        unmerge_lora(gpt)


def test_unmerge_follows_a_dtype_change_made_while_merged(tiny_folder: Path) -> None:
    gpt = _trained(tiny_folder, VARIANTS["q-v-fc-dora-pissa"])
    ids = random_ids(2, 7)
    with torch.no_grad():
        expected = gpt(ids)
        merge_lora(gpt).double()
        unmerge_lora(gpt)
        assert all(p.dtype == torch.float64 for p in gpt.parameters())
        torch.testing.assert_close(gpt(ids).float(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", VARIANTS.values(), ids=VARIANTS.keys())
def test_merged_export_loads_in_transformers_with_the_same_logits(
    tiny_folder: Path, tmp_path: Path, kwargs: dict
) -> None:
    gpt = _trained(tiny_folder, kwargs)
    ids = random_ids(2, 10)
    with torch.no_grad():
        expected = gpt(ids)
    folder = export_hf(gpt, tmp_path / "export")
    assert lora_modules(gpt) and not any(m.merged for m in lora_modules(gpt).values())  # the model is untouched
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(gpt(ids), expected, atol=0, rtol=0)
