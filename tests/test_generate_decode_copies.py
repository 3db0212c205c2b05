"""Decoding through model.decode's (in, out) weight copies (CPU, <= 4 rows, n_embd >= 256) gives the same tokens."""

from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig, apply_lora, generate
from model.decode import DecodeLinear, decode_layout
from model.lora import lora_adapters


@pytest.mark.parametrize(
    "lora", [None, {}, {"targets": ["q", "v", "mlp_proj"], "variant": "dora"}], ids=["base", "lora", "qv-dora"]
)
def test_decode_copies_give_the_same_tokens_as_recomputing_everything(lora: dict | None) -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=256, vocab_size=300, n_positions=64))
    if lora is not None:
        apply_lora(gpt, rank=4, alpha=8, **lora)
        for adapter in lora_adapters(gpt).values():
            torch.nn.init.normal_(adapter.lora_b.weight, std=0.05)  # a non-zero update, so merging matters
    block = gpt.transformer.h[0]
    modules = {"qkv": block.attn.c_attn, "fc": block.mlp.c_fc, "mlp_proj": block.mlp.c_proj}
    with torch.inference_mode(), decode_layout(gpt, 5) as swapped:
        assert not swapped and block.attn.c_attn is modules["qkv"]
    ids = torch.randint(0, 300, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    fast = generate(gpt, ids, 12, attention_mask=mask)
    reference = generate(gpt, ids, 12, attention_mask=mask, use_cache=False)
    assert torch.equal(fast, reference)
    gpt.eval()
    with torch.inference_mode(), decode_layout(gpt, 2) as swapped:  # and the logits the copies give match the modules'
        assert swapped and isinstance(gpt.lm_head, DecodeLinear)
        copies = {"qkv": block.attn.c_attn, "fc": block.mlp.c_fc, "mlp_proj": block.mlp.c_proj}
        for name, module in modules.items():
            assert (copies[name] is not module) == (name != "mlp_proj" or type(module) is not torch.nn.Linear)
            x = torch.randn(2, 1, module.weight.shape[1])
            torch.testing.assert_close(copies[name](x), module(x), atol=1e-5, rtol=1e-5)
    assert block.attn.c_attn is modules["qkv"] and gpt.lm_head.weight is gpt.transformer.wte.weight  # put back
