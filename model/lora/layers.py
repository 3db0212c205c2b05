"""Frozen linears carrying LoRA adapters: `LoRALinear` (one adapter over the whole output, torchtune's shape) and
`LoRAQKVLinear` (GPT-2's fused c_attn with separate adapters on its q, k and/or v rows, litgpt's shape).

Both own the frozen `weight` (out, in) and `bias` of the linear they replace (the same tensors, so base keys are
unchanged) and share `AdaptedLinear`'s forward, merge and unmerge; each adapter sees only its own rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.lora.adapter import LoRAAdapter
from model.lora.settings import QKV_SLICES


class AdaptedLinear:
    """Mixin for an nn.Module with a frozen `weight` (out, in), `bias` and adapters over row ranges of its output."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    merged: bool

    def adapters(self) -> list[tuple[str, LoRAAdapter, slice]]:
        """(name relative to this module, adapter, the output rows it adapts)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        for _, adapter, rows in self.adapters():
            bias = self.bias[rows] if self.bias is not None else None
            adapter.add_to(out, rows, x, self.weight[rows], bias)
        return out

    def merged_weight(self) -> torch.Tensor:
        """The weight with every adapter folded in, as a new tensor (the module is unchanged)."""
        if self.merged:
            return self.weight.detach()
        weight = self.weight.detach()
        blocks, done = [], 0
        with torch.no_grad():
            for _, adapter, rows in sorted(self.adapters(), key=lambda part: part[2].start):
                blocks += [weight[done : rows.start], adapter.fold(weight[rows])]
                done = rows.stop
            blocks.append(weight[done:])
            blocks = [b for b in blocks if b.shape[0]]
            return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapters into the base weight; later forwards skip them until `unmerge`."""
        if not self.merged:
            for _, adapter, rows in self.adapters():
                adapter.merge_into(self.weight[rows])
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the adapters back out of the base weight (float rounding aside, the weight `merge` found)."""
        if self.merged:
            for _, adapter, rows in self.adapters():
                adapter.unmerge_from(self.weight[rows])
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """Merge, and a plain nn.Linear holding this module's weight and bias tensors (not copies)."""
        self.merge()
        out_dim, in_dim = self.weight.shape
        linear = nn.Linear(in_dim, out_dim, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        return linear

    def _take_base(self, linear: nn.Linear) -> None:
        """Hold `linear`'s weight and bias (frozen); give the adapters real memory beside them and their start."""
        self.weight = linear.weight.requires_grad_(False)
        self.bias = linear.bias.requires_grad_(False) if linear.bias is not None else None
        for _, adapter, rows in self.adapters():
            adapter.materialize(linear.weight.device)
            adapter.init_magnitude(self.weight[rows])  # DoRA: m = the row norms, so the layer starts at the base


class LoRALinear(AdaptedLinear, LoRAAdapter):
    """A frozen linear plus one trainable low-rank update over its whole output (`lora_a`, `lora_b`).

    Args:
        in_dim: input features.
        out_dim: output features.
        use_bias: whether the base linear has a bias. Default: True (all of GPT-2's do).
        **adapter_kwargs: `rank`, `alpha`, `dropout`, `rslora`, `variant`; see `LoRAAdapter`.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        use_bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **adapter_kwargs: Any,
    ) -> None:
        LoRAAdapter.__init__(self, in_dim, out_dim, device=device, dtype=dtype, **adapter_kwargs)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim, **factory), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_dim, **factory), requires_grad=False) if use_bias else None
        self.merged = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, **adapter_kwargs: Any) -> LoRALinear:
        """Wrap an existing linear: its weight and bias tensors are reused (frozen), not copied."""
        # built on meta so no throw-away base weight is allocated; only the adapter gets real memory
        module = cls(
            linear.in_features,
            linear.out_features,
            use_bias=linear.bias is not None,
            device="meta",
            dtype=linear.weight.dtype,
            **adapter_kwargs,
        )
        module._take_base(linear)
        return module

    def adapters(self) -> list[tuple[str, LoRAAdapter, slice]]:
        return [("", self, slice(0, self.out_dim))]

    def extra_repr(self) -> str:
        return f"{LoRAAdapter.extra_repr(self)}, merged={self.merged}"


class LoRAQKVLinear(AdaptedLinear, nn.Module):
    """GPT-2's fused qkv linear (out = 3 · n_embd) with a separate adapter on each chosen slice: `q`, `k`, `v`.

    An adapter on q alone equals a full-width adapter whose B rows for k and v are zero and stay zero; [q, v] is the
    LoRA paper's own setting (Hu et al. 2021, §7.1), which PEFT cannot express on a fused projection.
    """

    def __init__(self, linear: nn.Linear, slices: tuple[str, ...], **adapter_kwargs: Any) -> None:
        super().__init__()
        if linear.out_features % 3 or not slices or any(s not in QKV_SLICES for s in slices):
            raise ValueError(
                f"LoRAQKVLinear needs a fused qkv linear (out = 3 x in) and slices among q, k, v, but got "
                f"out={linear.out_features}, slices={list(slices)}"
            )
        self.in_dim, self.out_dim = linear.in_features, linear.out_features
        width = self.out_dim // 3
        self.slices = tuple(s for s in QKV_SLICES if s in slices)  # q, k, v order
        for name in self.slices:
            adapter = LoRAAdapter(self.in_dim, width, device="meta", dtype=linear.weight.dtype, **adapter_kwargs)
            self.add_module(name, adapter)
        self.merged = False
        self._take_base(linear)

    @classmethod
    def from_linear(cls, linear: nn.Linear, slices: tuple[str, ...], **adapter_kwargs: Any) -> LoRAQKVLinear:
        return cls(linear, slices, **adapter_kwargs)

    def adapters(self) -> list[tuple[str, LoRAAdapter, slice]]:
        width = self.out_dim // 3
        return [
            (name, self.get_submodule(name), slice(QKV_SLICES[name] * width, (QKV_SLICES[name] + 1) * width))
            for name in self.slices
        ]

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}, slices={','.join(self.slices)}, merged={self.merged}"
