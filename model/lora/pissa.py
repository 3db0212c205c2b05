"""PiSSA initialisation (Meng et al. 2024, arXiv:2404.02948): the adapter starts on the weight's principal part.

    W = U S V^T,   A = sqrt(S_r / s) V_r^T,   B = U_r sqrt(S_r / s),   W_res = W - s · B A

so the adapted model starts exactly where the base model is, but training moves the top-r singular directions
instead of a zero update. This is PEFT's `init_lora_weights="pissa"` (full SVD, in float32 for 16/32-bit weights).
For a q, k or v slice the SVD is that slice's own weight block.

The residual replaces the base weight, so an adapter-only checkpoint must say how to rebuild it: the starting
factors A0, B0 are kept as buffers (`pissa_a0`, `pissa_b0`, as small as the adapter) and `restore_pissa` subtracts
s · B0 A0 from the original weights again, with no SVD and no dependence on the linear-algebra library.
"""

from __future__ import annotations

import torch

from model.lora.adapter import LoRAAdapter


@torch.no_grad()
def _set_start(adapter: LoRAAdapter, weight: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> None:
    """A = A0, B = B0, buffers that keep them (in the SVD's dtype), and W -= (s · B0) A0, in PEFT's order."""
    adapter.lora_a.weight.copy_(a0)
    adapter.lora_b.weight.copy_(b0)
    device = adapter.lora_a.weight.device
    adapter.register_buffer("pissa_a0", a0.to(device).clone())
    adapter.register_buffer("pissa_b0", b0.to(device).clone())
    residual = weight.to(a0.dtype) - (adapter.scale * b0.to(weight.device)) @ a0.to(weight.device)
    weight.copy_(residual.to(weight.dtype))


@torch.no_grad()
def init_pissa(adapter: LoRAAdapter, weight: torch.Tensor) -> None:
    """Principal singular vectors of `weight` (the adapted block, out x in) into A and B; `weight` becomes W_res."""
    work = weight.float() if weight.dtype != torch.float64 else weight
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    r = adapter.rank
    root = torch.sqrt(s[:r] / adapter.scale)
    a0 = root[:, None] * vh[:r]  # (r, in)
    b0 = u[:, :r] * root[None, :]  # (out, r)
    _set_start(adapter, weight, a0, b0)


@torch.no_grad()
def restore_pissa(adapter: LoRAAdapter, weight: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> None:
    """The state `init_pissa` left, rebuilt from saved starting factors on the original `weight`."""
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    _set_start(adapter, weight, a0.to(work), b0.to(work))


def pissa_start(adapter: LoRAAdapter) -> dict[str, torch.Tensor]:
    """The adapter's starting factors by buffer name; empty for an adapter not initialised by PiSSA."""
    return {name: buf for name, buf in adapter.named_buffers(recurse=False) if name in ("pissa_a0", "pissa_b0")}
