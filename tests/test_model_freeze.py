"""freeze_blocks: frozen tensors stay bit-identical through optimizer steps; with LoRA, in either order."""

from __future__ import annotations

import pytest
import torch
from model_refs import random_ids

from model import GPT, GPTConfig, apply_lora, count_parameters, freeze_blocks
from model.lora import lora_modules

VOCAB = 256


def _model(num_classes: int | None = 3) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, vocab_size=VOCAB, num_classes=num_classes))


def _train(gpt: GPT, steps: int = 2) -> None:
    opt = torch.optim.AdamW([p for p in gpt.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = random_ids(4, 12, vocab=VOCAB)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(gpt(ids), torch.tensor([0, 1, 2, 1]))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _frozen_prefixes(k: int) -> tuple[str, ...]:
    return ("transformer.wte.", "transformer.wpe.", *(f"transformer.h.{i}." for i in range(k)))


@pytest.mark.parametrize("k", [1, 3])
def test_frozen_tensors_are_bit_identical_after_steps(k: int) -> None:
    gpt = freeze_blocks(_model(), k)
    before = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    _train(gpt)
    for name, p in gpt.named_parameters():
        if name.startswith(_frozen_prefixes(k)):
            assert not p.requires_grad and torch.equal(p, before[name]), name
        else:
            assert p.requires_grad and not torch.equal(p, before[name]), name


@pytest.mark.parametrize("lora_first", [True, False])
def test_lora_with_frozen_blocks_in_either_order(lora_first: bool) -> None:
    gpt = _model()
    if lora_first:
        apply_lora(gpt, rank=2, alpha=4)
        freeze_blocks(gpt, 2)
    else:
        freeze_blocks(gpt, 2)
        apply_lora(gpt, rank=2, alpha=4)
    assert sorted(lora_modules(gpt)) == [
        f"transformer.h.2.{t}" for t in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    # adapters of block 2 (4 x rank x (in + out)) + the head
    assert count_parameters(gpt)[0] == 2 * (32 + 96 + 32 + 32 + 32 + 128 + 128 + 32) + 3 * 32
    before = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    _train(gpt)
    for name, p in gpt.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == ("lora_" in name or name.startswith("score.")), name


def test_zero_freezes_nothing_and_freezing_never_unfreezes() -> None:
    gpt = freeze_blocks(_model(None), 0)
    trainable, total = count_parameters(gpt)
    assert trainable == total
    freeze_blocks(gpt, 2)
    frozen = {n for n, p in gpt.named_parameters() if not p.requires_grad}
    freeze_blocks(gpt, 1)  # smaller k: no change
    assert {n for n, p in gpt.named_parameters() if not p.requires_grad} == frozen
    assert gpt.frozen_blocks == 2
    # the LM head is tied to wte, so it is frozen with it
    assert not gpt.lm_head.weight.requires_grad


def test_all_blocks_frozen_leaves_final_norm_and_head() -> None:
    gpt = freeze_blocks(_model(), 3)
    assert {n for n, p in gpt.named_parameters() if p.requires_grad} == {
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        "score.weight",
    }


@pytest.mark.parametrize("k", [-1, 4, 1.5, True, "2"])
def test_k_outside_the_model_is_refused(k: object) -> None:
    gpt = _model()
    with pytest.raises(ValueError, match=r"integer in \[0, 3\] \(n_layer\), but got k="):
        freeze_blocks(gpt, k)
    assert all(p.requires_grad for p in gpt.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [{"targets": ["q", "v", "fc"]}, {"targets": ["q", "v", "fc"], "variant": "dora", "init": "pissa"}],
    ids=["q-v-fc", "q-v-fc-dora-pissa"],
)
def test_freezing_after_lora_merges_any_variant_away_at_its_start(kwargs: dict) -> None:
    gpt = apply_lora(_model(), rank=2, alpha=4, pretrained=True, **kwargs)
    ids = random_ids(2, 9, vocab=VOCAB)
    with torch.no_grad():
        before = gpt.eval()(ids)
        freeze_blocks(gpt, 2)
        torch.testing.assert_close(gpt(ids), before, atol=1e-5, rtol=0)
    assert sorted(lora_modules(gpt)) == ["transformer.h.2.attn.c_attn", "transformer.h.2.mlp.c_fc"]
    assert type(gpt.transformer.h[1].attn.c_attn) is torch.nn.Linear
