"""The fused LM head + cross-entropy (model.lm_head) equals the plain one, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, apply_lora
from model import lm_head as lm_head_module
from model.lm_head import lm_head_nll


@pytest.mark.parametrize("chunk", [512, 7])  # one chunk, and several uneven ones
@pytest.mark.parametrize("frozen_weight", [False, True])
def test_fused_head_loss_and_gradients_match_cross_entropy(
    monkeypatch: pytest.MonkeyPatch, chunk: int, frozen_weight: bool
) -> None:
    monkeypatch.setattr(lm_head_module, "CHUNK_ROWS", chunk)
    torch.manual_seed(0)
    h = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(101, 16, dtype=torch.float64, requires_grad=not frozen_weight)
    t = torch.randint(0, 101, (23,))
    ref = F.cross_entropy(h @ w.t(), t, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.5, [h] if frozen_weight else [h, w])
    ours = lm_head_nll(h, w, t)
    grads = torch.autograd.grad(ours * 0.5, [h] if frozen_weight else [h, w])
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(lm_head_nll(h, w, t), ref, atol=1e-10, rtol=1e-10)


def test_lm_loss_gradients_match_the_unfused_head() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_preset("tiny", vocab_size=300)).double()
    ids = torch.randint(0, 300, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100

    def unfused() -> torch.Tensor:
        h = gpt.transformer.ln_f(gpt.hidden_states(ids)[:, :-1])
        return F.cross_entropy(gpt.lm_head(h).flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    for lora in (False, True):
        if lora:
            apply_lora(gpt, rank=2, alpha=4)
            for m in gpt.modules():
                if hasattr(m, "lora_b"):
                    torch.nn.init.normal_(m.lora_b.weight, std=0.1)
        params = [p for p in gpt.parameters() if p.requires_grad]
        ref = torch.autograd.grad(unfused(), params)
        loss = gpt.lm_loss(ids, labels)
        torch.testing.assert_close(loss, unfused(), atol=1e-10, rtol=1e-10)
        for g, r in zip(torch.autograd.grad(loss, params), ref, strict=True):
            torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)


def test_second_backward_through_the_fused_head_is_refused() -> None:
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(10, 8)
    loss = lm_head_nll(h, w, torch.tensor([1, 2, 3, 4]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        loss.backward()
