"""Decode-time weight layout for `model.generate`: one context manager, `decode_layout`.

A decoding step multiplies one row per sequence by every weight, so it is bound by how fast the weights stream from
memory. On CPU, MKL streams `x @ W` with W stored (in, out) faster than `F.linear`'s (out, in) when out >= in (the
LM head, c_attn, attn c_proj, c_fc), and a LoRA weight merged in skips the adapter's extra products. For the decode
steps of one call, `decode_layout` swaps those linears for such copies and puts the modules back afterwards; the
model's own forward path does not know. BENCHMARKS.md has the measured gain; memory grows by the copied weights
during the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from model.lora import AdaptedLinear

if TYPE_CHECKING:
    from model.gpt2 import GPT

MAX_ROWS = 4  # more rows make the products matrix-matrix, where the module's layout does as well
MIN_WIDTH = 256  # narrower blocks fit in cache: their products are bound by dispatch, not memory
BLOCK_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class DecodeLinear(nn.Module):
    """y = x W^T + b through a stored (in, out) copy of W."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_t = weight.detach().t().contiguous()  # (in, out)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = flat @ self.weight_t if self.bias is None else torch.addmm(self.bias, flat, self.weight_t)
        return y.view(*x.shape[:-1], y.shape[-1])


class MergedLinear(nn.Module):
    """F.linear with a LoRA-merged weight in the module's own (out, in) layout (out < in, where it is faster)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _replacement(module: nn.Module) -> nn.Module | None:
    """The decode copy for one block linear (plain or LoRA-adapted), or None to keep the module."""
    adapted = isinstance(module, AdaptedLinear) and not module.merged
    if adapted:
        weight = module.merged_weight()
    elif isinstance(module, nn.Linear | AdaptedLinear):
        weight = module.weight
    else:
        return None
    out_dim, in_dim = weight.shape
    if out_dim >= in_dim:
        return DecodeLinear(weight, module.bias)
    return MergedLinear(weight, module.bias) if adapted else None


def _plan(gpt: GPT, batch: int) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, copy) for each module to swap; none off CPU or for more than `MAX_ROWS` rows."""
    head = gpt.lm_head.weight
    if head.device.type != "cpu" or batch > MAX_ROWS:
        return []
    swaps: list[tuple[nn.Module, str, nn.Module]] = [(gpt, "lm_head", DecodeLinear(head, None))]
    if gpt.config.n_embd < MIN_WIDTH:
        return swaps
    for block in gpt.transformer.h:
        for path in BLOCK_LINEARS:
            parent_name, _, child = path.rpartition(".")
            parent = block.get_submodule(parent_name)
            copy = _replacement(getattr(parent, child))
            if copy is not None:
                swaps.append((parent, child, copy))
    return swaps


@contextmanager
def decode_layout(gpt: GPT, batch: int) -> Iterator[bool]:
    """Within the block, the LM head and the block linears of `gpt` are decode copies (CPU, <= `MAX_ROWS` rows).

    Yields whether anything was swapped. The model is restored on exit, exceptions included; use it under
    `torch.inference_mode()` with the model in eval mode, as `generate` does.
    """
    swaps = _plan(gpt, batch)
    originals = [(parent, name, getattr(parent, name)) for parent, name, _ in swaps]
    try:
        for parent, name, copy in swaps:
            setattr(parent, name, copy)
        yield bool(swaps)
    finally:
        for parent, name, module in originals:
            setattr(parent, name, module)
