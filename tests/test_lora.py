"""LoRA against PEFT: parameter counts, outputs and gradients with the same A/B, merging, the B = 0 start."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from model_refs import PEFT_TARGETS, TINY, copy_adapters_from_peft, hf_gpt2, peft_lora, random_ids, save_hf
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, GPTConfig, LoRALinear, apply_lora, count_parameters, from_pretrained, generate, merge_lora
from model.lora import TARGETS, adapter_state_dict, lora_adapters, lora_modules


def _peft(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...], rslora: bool = False) -> nn.Module:
    return peft_lora(model, rank, alpha, PEFT_TARGETS[targets], use_rslora=rslora)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf(hf_gpt2(**TINY, seed=7), tmp_path_factory.mktemp("tiny_lora"))


@pytest.mark.parametrize("targets", list(PEFT_TARGETS))
def test_trainable_counts_equal_peft_for_gpt2_small(targets: tuple[str, ...]) -> None:
    with torch.device("meta"):
        ours = apply_lora(GPT(GPTConfig.from_preset("small")), rank=8, alpha=16, targets=targets)
        theirs = _peft(GPT2LMHeadModel(GPT2Config()), 8, 16, targets)
    assert count_parameters(ours) == theirs.get_nb_trainable_parameters()
    if targets == ("qkv",):
        assert count_parameters(ours)[0] == 294_912


@pytest.mark.parametrize("rslora", [False, True])
def test_outputs_and_gradients_equal_peft_with_the_same_adapters(tiny_folder: Path, rslora: bool) -> None:
    targets = ("qkv", "attn_proj", "fc", "mlp_proj")
    peft_model = _peft(GPT2LMHeadModel.from_pretrained(tiny_folder), 4, 8, targets, rslora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained-looking adapter, not PEFT's zero start
    ours = apply_lora(from_pretrained(tiny_folder), rank=4, alpha=8, targets=targets, rslora=rslora)
    copy_adapters_from_peft(ours, peft_model)
    assert ours.transformer.h[0].attn.c_attn.scale == pytest.approx(8 / (math.sqrt(4) if rslora else 4))
    ids = random_ids(2, 10)
    ours(ids).square().mean().backward()
    peft_model(ids).logits.square().mean().backward()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), peft_model(ids).logits, atol=1e-5, rtol=0)
    theirs = {n.removeprefix("base_model.model."): p for n, p in peft_model.named_parameters()}
    for name, module in lora_modules(ours).items():
        for mine, peft_name in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            expected = theirs[f"{name}.{peft_name}.default.weight"].grad
            torch.testing.assert_close(module.get_parameter(f"{mine}.weight").grad, expected, atol=1e-6, rtol=1e-4)


def test_zero_b_start_is_the_base_model_exactly(tiny_folder: Path) -> None:
    base = from_pretrained(tiny_folder, num_classes=3)
    torch.manual_seed(1)
    with torch.no_grad():
        base.score.weight.normal_()
    lora = from_pretrained(tiny_folder, num_classes=3)
    lora.load_state_dict(base.state_dict())
    apply_lora(lora, rank=8, alpha=16)
    ids = random_ids(2, 9)
    with torch.no_grad():
        assert torch.equal(lora.eval()(ids), base.eval()(ids))
    assert all(float(m.lora_a.weight.detach().abs().sum()) > 0 for m in lora_modules(lora).values())


def test_merged_equals_unmerged_and_is_plain_gpt2(tiny_folder: Path) -> None:
    gpt = apply_lora(from_pretrained(tiny_folder), rank=4, alpha=16, dropout=0.1)
    torch.manual_seed(2)
    with torch.no_grad():
        for m in lora_modules(gpt).values():
            m.lora_b.weight.normal_(0, 0.1)
    ids = random_ids(2, 11)
    gpt.eval()
    with torch.no_grad():
        before = gpt(ids)
        merge_lora(gpt)
        after = gpt(ids)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert not lora_modules(gpt)
    assert type(gpt.transformer.h[1].mlp.c_fc) is nn.Linear
    assert gpt.lora_config is None


def test_only_adapters_and_the_head_train() -> None:
    gpt = GPT(GPTConfig.from_preset("tiny", num_classes=4))
    base_fc = gpt.transformer.h[0].mlp.c_fc.weight
    apply_lora(gpt, 2, 4, targets=["fc", "qkv"])
    trainable = {n for n, p in gpt.named_parameters() if p.requires_grad}
    adapters = {
        f"transformer.h.{i}.{TARGETS[t]}.lora_{ab}.weight" for i in range(2) for t in ("fc", "qkv") for ab in "ab"
    }
    assert trainable == adapters | {"score.weight"}
    assert set(adapter_state_dict(gpt)) == adapters
    assert gpt.lora_config == {
        "rank": 2,
        "alpha": 4.0,
        "dropout": 0.0,
        "rslora": False,
        "targets": ["fc", "qkv"],
        "variant": "lora",
        "init": "default",
    }
    # the wrapper holds the model's own base tensor, not a copy
    assert isinstance(gpt.transformer.h[0].mlp.c_fc, LoRALinear)
    assert gpt.transformer.h[0].mlp.c_fc.weight is base_fc


@pytest.mark.parametrize("kwargs", [{}, {"targets": ["q", "v", "fc"], "variant": "dora"}], ids=["lora", "qv-dora"])
def test_lora_trains_and_generates_under_bf16_autocast(kwargs: dict) -> None:
    torch.manual_seed(0)
    gpt = apply_lora(GPT(GPTConfig.from_preset("tiny", vocab_size=256)), 4, 8, **kwargs)
    ids = random_ids(2, 8, vocab=256)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gpt.lm_loss(ids, ids).backward()
        out = generate(gpt, ids, 4, attention_mask=mask)
    grads = [p.grad for p in gpt.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(m.lora_b.weight.grad.abs().sum() > 0 for m in lora_adapters(gpt).values())
    assert out.shape == (2, 12)


def test_adapter_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    gpt = apply_lora(GPT(GPTConfig.from_preset("tiny", vocab_size=256)), 4, 8, dropout=0.5)
    with torch.no_grad():
        for m in lora_modules(gpt).values():
            m.lora_b.weight.normal_()
    ids = random_ids(1, 8, vocab=256)
    assert not torch.equal(gpt.train()(ids), gpt(ids))
    assert torch.equal(gpt.eval()(ids), gpt(ids))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "integer >= 1, but got rank=0"),
        ({"rank": 2.5}, "rank=2.5"),
        ({"alpha": 0}, "> 0, but got alpha=0"),
        ({"alpha": -16}, "alpha=-16"),
        ({"dropout": 1.0}, r"\[0, 1\), but got dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"targets": ("qkv", "q_proj")}, "qkv, attn_proj, fc, mlp_proj, but got unknown target.s. q_proj"),
        ({"targets": ()}, "at least one"),
    ],
)
def test_bad_lora_settings(kwargs: dict, match: str) -> None:
    gpt = GPT(GPTConfig.from_preset("tiny", vocab_size=128))
    with pytest.raises(ValueError, match=match):
        apply_lora(gpt, **{"rank": 4, "alpha": 8, **kwargs})
    assert all(p.requires_grad for p in gpt.parameters())  # nothing was changed before the error


def test_applying_twice_is_refused() -> None:
    gpt = apply_lora(GPT(GPTConfig.from_preset("tiny", vocab_size=128)), 4, 8)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(gpt, 4, 8)
