"""Decoding through generate's (in, out) weight copies (CPU, <= 4 rows, n_embd >= 256) gives the reference tokens."""

from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig, apply_lora
from model.generate import _decode_linears


@pytest.mark.parametrize("lora", [False, True])
def test_decode_copies_give_the_same_tokens_as_recomputing_everything(lora: bool) -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=256, vocab_size=300, n_positions=64))
    if lora:
        apply_lora(gpt, rank=4, alpha=8)
        for m in gpt.modules():
            if hasattr(m, "lora_b"):
                torch.nn.init.normal_(m.lora_b.weight, std=0.05)  # a non-zero update, so merging matters
    assert _decode_linears(gpt, 2) is not None and _decode_linears(gpt, 5) is None
    ids = torch.randint(0, 300, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    fast = gpt.generate(ids, 12, attention_mask=mask)
    reference = gpt.generate(ids, 12, attention_mask=mask, use_cache=False)
    assert torch.equal(fast, reference)
    with torch.no_grad():  # and the logits the copies give match the modules'
        block = gpt.transformer.h[0]
        copies = _decode_linears(gpt, 2)[0]
        for name, module in (("qkv", block.attn.c_attn), ("fc", block.mlp.c_fc), ("mlp_proj", block.mlp.c_proj)):
            x = torch.randn(2, 1, module.weight.shape[1])
            torch.testing.assert_close(copies[name](x), module(x), atol=1e-5, rtol=1e-5)
