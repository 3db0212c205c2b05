"""q, k, v targets (slices of the fused c_attn): counts, equality with a full-width PEFT adapter whose B rows for the
untouched slices are zero and stay zero, combinations, and the one-line refusals of bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_refs import TINY, hf_gpt2, peft_lora, peft_params, random_ids, save_hf
from transformers import GPT2LMHeadModel

from model import GPT, GPTConfig, LoRALinear, LoRAQKVLinear, apply_lora, count_parameters, from_pretrained
from model.lora import QKV_SLICES, LoRASettings, lora_adapters, lora_modules

RANK, ALPHA, C = 4, 8, TINY["n_embd"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf(hf_gpt2(**TINY, seed=31), tmp_path_factory.mktemp("tiny_qkv"))


@pytest.mark.parametrize("rank", [1, 8, 16])
def test_q_v_trainable_count_on_gpt2_small(rank: int) -> None:
    with torch.device("meta"):
        gpt = apply_lora(GPT(GPTConfig.from_preset("small")), rank=rank, alpha=2 * rank, targets=["q", "v"])
    assert count_parameters(gpt)[0] == 12 * 2 * (768 * rank + rank * 768)


def _ours(folder: Path, slices: tuple[str, ...], variant: str) -> GPT:
    gpt = apply_lora(from_pretrained(folder), rank=RANK, alpha=ALPHA, targets=slices, variant=variant)
    torch.manual_seed(4)
    with torch.no_grad():  # a trained-looking adapter
        for adapter in lora_adapters(gpt).values():
            adapter.lora_b.weight.normal_(0, 0.1)
            if adapter.lora_magnitude is not None:
                adapter.lora_magnitude.mul_(1 + 0.1 * torch.randn_like(adapter.lora_magnitude))
    return gpt


def _full_width_reference(folder: Path, ours: GPT, slices: tuple[str, ...], variant: str) -> torch.nn.Module:
    """PEFT on c_attn at rank len(slices) x r: A stacks our A's; B holds each slice's B in its rows and columns,
    zeros elsewhere; alpha scaled so that PEFT's alpha / rank is our alpha / r."""
    n = len(slices)
    peft_model = peft_lora(
        GPT2LMHeadModel.from_pretrained(folder), n * RANK, n * ALPHA, ["c_attn"], use_dora=variant == "dora"
    )
    theirs = peft_params(peft_model)
    with torch.no_grad():
        for i in range(ours.config.n_layer):
            name = f"transformer.h.{i}.attn.c_attn"
            a, b = theirs[f"{name}.lora_A.default.weight"], theirs[f"{name}.lora_B.default.weight"]
            b.zero_()
            for j, s in enumerate(slices):
                adapter, rows, cols = ours.get_submodule(f"{name}.{s}"), _rows(s), slice(j * RANK, (j + 1) * RANK)
                a[cols] = adapter.lora_a.weight
                b[rows, cols] = adapter.lora_b.weight
                if variant == "dora":
                    theirs[f"{name}.lora_magnitude_vector.default.weight"][rows] = adapter.lora_magnitude
    return peft_model


def _rows(s: str) -> slice:
    return slice(QKV_SLICES[s] * C, (QKV_SLICES[s] + 1) * C)


def _mask_off_block_grads(peft_model: torch.nn.Module, slices: tuple[str, ...], n_layer: int) -> None:
    """Keep B's entries outside the slices' blocks at zero: the reference's 'stay zero'."""
    theirs = peft_params(peft_model)
    for i in range(n_layer):
        b = theirs[f"transformer.h.{i}.attn.c_attn.lora_B.default.weight"]
        keep = torch.zeros_like(b, dtype=torch.bool)
        for j, s in enumerate(slices):
            keep[_rows(s), j * RANK : (j + 1) * RANK] = True
        b.grad[~keep] = 0.0


@pytest.mark.parametrize("variant", ["lora", "dora"])
@pytest.mark.parametrize("slices", [("q",), ("k",), ("q", "v"), ("q", "k", "v")], ids="".join)
def test_slices_equal_a_full_width_adapter_with_zero_rows(tiny_folder: Path, slices: tuple[str, ...], variant: str):
    ours = _ours(tiny_folder, slices, variant)
    reference = _full_width_reference(tiny_folder, ours, slices, variant)
    ids = random_ids(2, 10)
    ours(ids).square().mean().backward()
    reference(ids).logits.square().mean().backward()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).logits, atol=1e-5, rtol=0)
    theirs = peft_params(reference)
    for i in range(ours.config.n_layer):
        name = f"transformer.h.{i}.attn.c_attn"
        for j, s in enumerate(slices):
            adapter, rows, cols = ours.get_submodule(f"{name}.{s}"), _rows(s), slice(j * RANK, (j + 1) * RANK)
            grads = {
                "lora_a.weight": theirs[f"{name}.lora_A.default.weight"].grad[cols],
                "lora_b.weight": theirs[f"{name}.lora_B.default.weight"].grad[rows, cols],
            }
            if variant == "dora":
                grads["lora_magnitude"] = theirs[f"{name}.lora_magnitude_vector.default.weight"].grad[rows]
            for mine, expected in grads.items():
                torch.testing.assert_close(adapter.get_parameter(mine).grad, expected, atol=1e-6, rtol=1e-4)


def test_training_keeps_the_untouched_slice_and_follows_the_reference(tiny_folder: Path) -> None:
    slices = ("q", "v")
    ours = _ours(tiny_folder, slices, "lora")
    reference = _full_width_reference(tiny_folder, ours, slices, "lora")
    base_k = from_pretrained(tiny_folder).transformer.h[0].attn.c_attn.weight[_rows("k")].clone()
    opts = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9) for m in (ours, reference)
    ]
    ids = random_ids(3, 12)
    for _ in range(3):
        ours(ids).square().mean().backward()
        reference(ids).logits.square().mean().backward()
        _mask_off_block_grads(reference, slices, ours.config.n_layer)
        for opt in opts:
            opt.step()
            opt.zero_grad()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).logits, atol=1e-5, rtol=0)
    c_attn = lora_modules(ours)["transformer.h.0.attn.c_attn"]
    assert not torch.equal(c_attn.merged_weight()[_rows("q")], c_attn.weight[_rows("q")])  # q did move
    assert torch.equal(c_attn.merged_weight()[_rows("k")], base_k)  # k never does


def test_q_v_with_the_attention_output_projection() -> None:
    gpt = apply_lora(GPT(GPTConfig.from_preset("tiny", vocab_size=128)), 2, 4, targets=["v", "attn_proj", "q"])
    attn = gpt.transformer.h[0].attn
    assert isinstance(attn.c_attn, LoRAQKVLinear) and attn.c_attn.slices == ("q", "v")
    assert isinstance(attn.c_proj, LoRALinear)
    assert gpt.lora_config["targets"] == ["v", "attn_proj", "q"]
    trainable = {n for n, p in gpt.named_parameters() if p.requires_grad}
    assert trainable == {
        f"transformer.h.{i}.attn.{m}.lora_{ab}.weight"
        for i in range(2)
        for m in ("c_attn.q", "c_attn.v", "c_proj")
        for ab in "ab"
    }
    gpt.lm_loss(random_ids(2, 6, vocab=128), random_ids(2, 6, vocab=128)).backward()
    assert all(p.grad is not None for p in gpt.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": ["q", "qkv"]}, r"once \(qkv already covers q, k and v\), but got targets=\[q, qkv\]"),
        ({"targets": ["query"]}, "among q, k, v, qkv, attn_proj, fc, mlp_proj, but got unknown target.s. query"),
        ({"variant": "vera"}, "variant` must be one of lora, dora, but got variant='vera'"),
        ({"init": "olora"}, "init` must be one of default, pissa, but got init='olora'"),
        ({"rank": 65, "targets": ["v"]}, r"min\(in, out\), but got rank=65 > 64 for target v \(64 -> 64\)"),
        ({"rank": 65, "targets": ["mlp_proj"]}, r"rank=65 > 64 for target mlp_proj \(256 -> 64\)"),
        ({"pissa_start": {}}, "`pissa_start` needs init='pissa', but got init='default'"),
        ({"pissa_start": {}, "init": "pissa"}, "pissa_a0 and pissa_b0 of every adapter, but got none for transformer"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_anything_changes(kwargs: dict, match: str) -> None:
    gpt = GPT(GPTConfig.from_preset("tiny", vocab_size=128))
    before = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    with pytest.raises(ValueError, match=match) as info:
        apply_lora(gpt, **{"rank": 4, "alpha": 8, **kwargs})
    assert "\n" not in str(info.value)
    assert not lora_modules(gpt) and gpt.lora_config is None
    assert all(p.requires_grad and torch.equal(p, before[n]) for n, p in gpt.named_parameters())


def test_settings_check_a_config_without_a_model() -> None:
    """What the trainer can run on a config before it reads data or weights."""
    settings = LoRASettings(rank=8, alpha=16, targets=["v", "q", "v"], variant="dora", init="pissa")
    assert settings.targets == ("v", "q") and settings.to_dict()["targets"] == ["v", "q"]
    settings.check_width(768)
    with pytest.raises(ValueError, match=r"rank=8 > 4 for target v \(4 -> 4\)"):
        settings.check_width(4)
    with pytest.raises(ValueError, match="init` must be one of default, pissa"):
        LoRASettings(rank=8, alpha=16, init="loftq")
