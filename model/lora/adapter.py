"""One low-rank update of one weight block: `LoRAAdapter` (LoRA, Hu et al. 2021; DoRA, Liu et al. 2024).

    LoRA:  y = x W^T + b + s · (dropout(x) A^T) B^T                     A: (r, in), B: (out, r), s = alpha / r
    DoRA:  y = m / ||W + s·B A||_row ⊙ (x W^T + s · (x A^T) B^T) + b     m: (out,) trainable, the norm detached

A is Kaiming-uniform and B zero (PEFT's default init), so the adapted model starts exactly at the base model
(LoRA §4.1); rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(r) instead, which keeps the update's size stable as
r grows. DoRA splits each output row of W + ΔW into a magnitude m (initialised to the row norms of W + ΔW) and a
direction; as DoRA §4.3 (and PEFT) recommends, the norm is a constant in backward. With adapter dropout in training,
DoRA's correction is computed on the dropped input, as PEFT's `DoraLinearLayer` does.

An adapter does not own its base weight: the layer that holds the frozen linear (`model.lora.layers`) hands it the
rows it adapts (a view), so one fused linear can carry several adapters (q, k, v) and a later multi-adapter layer can
route rows to different adapters over one base.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.lora.settings import LoRAVariant, check_adapter_args


class LoRAAdapter(nn.Module):
    """Trainable A, B (and DoRA's magnitude) for a frozen weight block of shape (out_dim, in_dim).

    Args:
        in_dim: input features of the block.
        out_dim: output features (rows) of the block.
        rank: r >= 1; "can be as low as 1" for attention (LoRA §7.2).
        alpha: scale numerator (> 0); alpha = 2 r is a common choice.
        dropout: dropout on the adapter's input only, in [0, 1). Default: 0.0 (skipped entirely).
        rslora: scale by alpha / sqrt(r) instead of alpha / r. Default: False.
        variant: "lora", or "dora" for a trainable per-row magnitude. Default: "lora".

    Raises:
        ValueError: rank < 1, alpha <= 0, dropout outside [0, 1) or an unknown variant.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
        variant: LoRAVariant = "lora",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_adapter_args(rank, alpha, dropout, variant)
        factory = {"device": device, "dtype": dtype}
        self.in_dim, self.out_dim, self.rank, self.alpha, self.variant = in_dim, out_dim, rank, float(alpha), variant
        self.lora_a = nn.Linear(in_dim, rank, bias=False, **factory)
        self.lora_b = nn.Linear(rank, out_dim, bias=False, **factory)
        # DoRA's m; set from the base rows by `init_magnitude` once the adapter sits on its weight
        self.lora_magnitude = nn.Parameter(torch.ones(out_dim, **factory)) if variant == "dora" else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale = alpha / (math.sqrt(rank) if rslora else rank)
        self._merge_norm: torch.Tensor | None = None  # DoRA: the row norms `merge_into` divided by
        if self.lora_a.weight.device.type != "meta":
            self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """PEFT's default init: A as nn.Linear's (Kaiming-uniform, a=sqrt(5)), B zeros."""
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def materialize(self, device: torch.device | str) -> None:
        """Real memory for an adapter built on the meta device, then the default init (the base is not touched)."""
        self.lora_a.to_empty(device=device)
        self.lora_b.to_empty(device=device)
        if self.lora_magnitude is not None:
            self.lora_magnitude = nn.Parameter(torch.ones_like(self.lora_magnitude, device=device))
        self.reset_lora_parameters()

    @torch.no_grad()
    def init_magnitude(self, weight: torch.Tensor) -> None:
        """DoRA: m = ||W + ΔW|| per output row of the block `weight` (out_dim, in_dim)."""
        if self.lora_magnitude is not None:
            self.lora_magnitude.copy_(self._row_norms(weight))

    def adapter_params(self) -> list[str]:
        """Names of the adapter's trainable tensors inside this module (torchtune's `AdapterModule` protocol)."""
        names = ["lora_a.weight", "lora_b.weight"]
        return [*names, "lora_magnitude"] if self.lora_magnitude is not None else names

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scale · B A, shape (out_dim, in_dim)."""
        return (self.lora_b.weight @ self.lora_a.weight) * self.scale

    @torch.no_grad()
    def _row_norms(self, weight: torch.Tensor) -> torch.Tensor:
        """||W + ΔW|| per output row, without gradient (DoRA §4.3)."""
        return torch.linalg.vector_norm(weight + self.delta_weight().to(weight.dtype), dim=1)

    def add_to(
        self, out: torch.Tensor, rows: slice, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        """Turn the base output's columns `rows` of `out` (..., N) = x W^T + b into the adapted ones, in place.

        `weight` and `bias` are the block's own rows (out_dim, in_dim) and (out_dim,).
        """
        flat = out.view(-1, out.shape[-1])[:, rows]  # (tokens, out_dim), a view
        xd = self.dropout(x)
        h = F.linear(xd, self.lora_a.weight).reshape(-1, self.rank)  # (tokens, r)
        b = self.lora_b.weight
        if b.dtype != out.dtype:  # under autocast: in-place ops are not cast for us
            b, h = b.to(out.dtype), h.to(out.dtype)
        if self.lora_magnitude is None:
            flat.addmm_(h, b.t(), alpha=self.scale)  # out += s · h B^T in one GEMM, no (tokens, out) temporary
            return
        factor = self.lora_magnitude / self._row_norms(weight)  # (out_dim,), gradient to m only
        update = (h @ b.t()) * self.scale
        if isinstance(self.dropout, nn.Dropout) and self.training:
            # PEFT: the base part of the correction uses the dropped input too
            base = F.linear(xd, weight).reshape(flat.shape)
            flat.add_(factor * (base + update) - base)
            return
        base = flat - bias if bias is not None else flat
        new = factor * (base + update)
        flat.copy_(new + bias if bias is not None else new)

    def fold(self, weight: torch.Tensor) -> torch.Tensor:
        """The block's weight with this adapter folded in (a new tensor): W + ΔW, or DoRA's m/||W + ΔW|| (W + ΔW)."""
        with torch.no_grad():
            full = weight + self.delta_weight().to(weight.dtype)
            if self.lora_magnitude is None:
                return full
            return full * (self.lora_magnitude / torch.linalg.vector_norm(full, dim=1)).to(weight.dtype)[:, None]

    @torch.no_grad()
    def merge_into(self, weight: torch.Tensor) -> None:
        """Fold the adapter into `weight` (the block's rows, modified in place); `unmerge_from` reverses it."""
        if self.lora_magnitude is not None:
            self._merge_norm = self._row_norms(weight)
        weight.copy_(self.fold(weight))

    @torch.no_grad()
    def unmerge_from(self, weight: torch.Tensor) -> None:
        """Take the adapter back out of a weight `merge_into` changed (in place)."""
        if self.lora_magnitude is not None:
            if self._merge_norm is None:
                raise RuntimeError("unmerge_from needs a DoRA adapter merged by merge_into, but got one never merged")
            weight.mul_((self._merge_norm / self.lora_magnitude).to(weight.dtype)[:, None])
            self._merge_norm = None
        weight.sub_(self.delta_weight().to(weight.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}, rank={self.rank}, scale={self.scale:g}, variant={self.variant}"
