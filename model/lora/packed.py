"""Several LoRA trials over one frozen GPT-2: `PackedGPT`, one forward whose row segments belong to different members.

LoRA trials of one study share everything heavy (the frozen base weights) and differ only in small adapters. Here
the base runs once over the concatenated batch of every member, and at each block linear every member's adapters
add their part to that member's rows only (`LoRAAdapter.add_to` on a row slice of the base output):

    out = x W^T + b                                 one GEMM over all members' rows, W read once
    out[rows_m] += adapters_m(x[rows_m])            per member: its own rank, alpha, targets, variant

A member (`PackedGPT.add_member`) is a whole `GPT` with LoRA of its own whose base tensors ARE the pack's (no copy):
alone it is an ordinary LoRA model (evaluation, checkpoints, optimizer groups work on it unchanged), inside the pack
its adapters are reached through the pack's `PackedLinear`s. Its frozen blocks have no adapters, its classification
head is its own (trainable, as alone). Parameters of different members are disjoint, so backpropagating the sum of
the members' losses once gives each member exactly the gradient it gets alone.

PiSSA is refused: it replaces the base weight by its residual W - s·B0A0 (`model.lora.pissa`), so a PiSSA trial
has a base of its own and cannot share an unmodified one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from model.lora.apply import _set_module, apply_lora, lora_modules
from model.lora.layers import AdaptedLinear
from model.lora.settings import LoRASettings

if TYPE_CHECKING:
    from model.gpt2 import GPT

# every linear of a block: a member may adapt any of them (targets q/k/v live on attn.c_attn)
BLOCK_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
PISSA_REFUSED = (
    "LoRA init=pissa cannot join a pack: PiSSA replaces the base weight by its residual W - s·B0·A0, so its trial "
    "has a base of its own (it runs alone)"
)


class _Routing:
    """The batch being run, as member keys and their row counts in batch order; shared by every packed layer of one
    pack. Layers `split` their tensors by `sizes` (never index rows: each indexed part would get a zero-filled
    gradient of the whole batch in backward)."""

    def __init__(self) -> None:
        self.keys: list[Hashable] = []
        self.sizes: list[int] = []


class PackedLinear(nn.Module):
    """A frozen block linear whose output rows get the adapters of the member they belong to.

    Holds the base `weight` and `bias` (the base model's tensors, so parameter names are unchanged) and, per member,
    that member's adapted module at the same place (or nothing: a frozen block, a linear it does not target).
    """

    def __init__(self, linear: nn.Linear, routing: _Routing) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self._routing = routing
        self._adapted: dict[Hashable, AdaptedLinear] = {}  # not submodules: each member owns its adapters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)  # the base, once for every member
        routing = self._routing
        parts, adapted = [], False
        for key, x_rows, out_rows in zip(routing.keys, x.split(routing.sizes), out.split(routing.sizes), strict=True):
            layer = self._adapted.get(key)
            if layer is None:
                parts.append(out_rows)
                continue
            # the member's rows as a tensor of their own, which its adapters change in place as they do alone; in
            # place on a view of `out` instead, autograd would copy the whole batch's gradient once per member
            mine = out_rows.clone()
            for _, adapter, cols in layer.adapters():
                bias = self.bias[cols] if self.bias is not None else None
                adapter.add_to(mine, cols, x_rows, self.weight[cols], bias)
            parts.append(mine)
            adapted = True
        return torch.cat(parts) if adapted else out

    def extra_repr(self) -> str:
        out_dim, in_dim = self.weight.shape
        return f"in={in_dim}, out={out_dim}, members={len(self._adapted)}"


class PackedHead(nn.Module):
    """The classification head: each member's own `score` on its rows."""

    def __init__(self, routing: _Routing) -> None:
        super().__init__()
        self._routing = routing
        self._heads: dict[Hashable, nn.Linear] = {}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        routing = self._routing
        parts = zip(routing.keys, h.split(routing.sizes), strict=True)
        return torch.cat([self._heads[key](part) for key, part in parts])


class PackedGPT(nn.Module):
    """One frozen GPT-2 base serving several LoRA members, each on its own rows of the batch.

    Args:
        base: a GPT without adapters; it is frozen and its block linears (and classification head) become packed
            layers, so it serves the pack only from then on.

    Raises:
        ValueError: the base already carries LoRA adapters or merged ones.
    """

    def __init__(self, base: GPT) -> None:
        super().__init__()
        if lora_modules(base) or base.lora_merged is not None or base.lora_config is not None:
            raise ValueError("PackedGPT needs a base model without LoRA adapters, but got one that has them")
        base.requires_grad_(False)
        self.base = base
        self._routing = _Routing()
        for block in base.transformer.h:
            for path in BLOCK_LINEARS:
                _set_module(block, path, PackedLinear(block.get_submodule(path), self._routing))
        # the head a randomly initialised base was built with: what a member of the same seed starts from
        self.score_init = base.score.weight.detach().clone() if base.score is not None else None
        if base.score is not None:
            base.score = PackedHead(self._routing)
        self.members = nn.ModuleDict()

    @property
    def device(self) -> torch.device:
        return self.base.transformer.wte.weight.device

    def add_member(self, key: str, lora: LoRASettings, frozen_blocks: int, score: torch.Tensor | None) -> GPT:
        """A new member: adapters from the global RNG as `apply_lora` then `freeze_blocks` draw them alone.

        The adapters are drawn on the CPU for every block and those of the first `frozen_blocks` blocks are then
        dropped, which is the order `tasks.train.build.build_model` uses, so a member seeded like a trial alone starts
        from the same numbers. `score` is the member's classification head at its start (copied), None for an LM.

        Raises:
            ValueError: a key already in the pack, PiSSA (see the module docstring), bad LoRA settings.
        """
        if key in self.members:
            raise ValueError(f"a pack member key must be new, but got key={key!r} twice")
        if lora.init == "pissa":
            raise ValueError(PISSA_REFUSED)
        config = self.base.config
        if (score is None) != (config.num_classes is None):
            raise ValueError(f"`score` must be given exactly for a classification base, but got num_classes="
                             f"{config.num_classes} and score={'none' if score is None else 'a tensor'}")  # fmt: skip
        member = _shell(self.base)
        apply_lora(member, lora.rank, lora.alpha, lora.dropout, lora.targets, lora.rslora, variant=lora.variant)
        for block in member.transformer.h[:frozen_blocks]:
            _drop_adapters(block)
        member.frozen_blocks = frozen_blocks
        self._attach(member, score)
        self.members[key] = member
        self._route(key, member)
        return member

    def remove_member(self, key: str) -> GPT:
        """Take a member out of the pack (its model stays usable alone while referenced)."""
        member = self.members[key]
        for module in self.base.modules():
            if isinstance(module, (PackedLinear, PackedHead)):
                (module._adapted if isinstance(module, PackedLinear) else module._heads).pop(key, None)
        del self.members[key]
        return member

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, segments: Sequence[tuple[str, int]]
    ) -> torch.Tensor:
        """The base model's forward (logits; class logits for classification) with `segments` = (member key, rows)
        in batch order: the first `rows` rows belong to the first member, and so on."""
        self._set_segments(segments, input_ids.shape[0])
        return self.base(input_ids, attention_mask)

    def lm_losses(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None,
        segments: Sequence[tuple[str, int]],
    ) -> list[torch.Tensor]:
        """Each member's summed next-token NLL on its own rows, from one pass over the blocks."""
        sizes = self._set_segments(segments, input_ids.shape[0])
        return self.base.lm_loss_rows(input_ids, labels, attention_mask, sizes, reduction="sum")

    def _set_segments(self, segments: Sequence[tuple[str, int]], batch: int) -> list[int]:
        unknown = [key for key, _ in segments if key not in self.members]
        if unknown:
            raise ValueError(f"segments must name members of the pack, but got unknown key(s) {unknown}")
        sizes = [n for _, n in segments]
        if sum(sizes) != batch:
            raise ValueError(f"segments must cover the batch's rows, but got {sum(sizes)} rows for a batch of {batch}")
        # kept until the next call: a checkpointed block recomputes its forward during backward
        self._routing.keys, self._routing.sizes = [key for key, _ in segments], sizes
        return sizes

    def _attach(self, member: GPT, score: torch.Tensor | None) -> None:
        """Make the member's base tensors the pack's own (the same Parameters), its head its own copy of `score`."""
        shared = dict(self.base.named_parameters(remove_duplicate=False))
        for name, module in member.named_modules():
            for pname, _ in list(module.named_parameters(recurse=False)):
                full = f"{name}.{pname}" if name else pname
                if full in shared:
                    setattr(module, pname, shared[full])
        member.tie_weights()
        if score is not None:
            member.score.weight = nn.Parameter(score.detach().to(self.device, copy=True))
        left = [n for n, p in member.named_parameters() if p.is_meta]
        if left:
            raise RuntimeError(f"pack member tensors without memory after attaching the base: {left[:3]}")
        member.to(self.device)  # the adapters (drawn on the CPU); the shared tensors are there already
        for module in lora_modules(member).values():
            for _, adapter, rows in module.adapters():
                adapter.init_magnitude(module.weight[rows])  # DoRA: m = the real base rows' norms, as alone
        member.source = self.base.source
        member.gradient_checkpointing = self.base.gradient_checkpointing

    def _route(self, key: str, member: GPT) -> None:
        for i, block in enumerate(self.base.transformer.h):
            for path in BLOCK_LINEARS:
                mine = member.transformer.h[i].get_submodule(path)
                if isinstance(mine, AdaptedLinear):
                    block.get_submodule(path)._adapted[key] = mine
        if member.score is not None:
            self.base.score._heads[key] = member.score


def _shell(base: GPT) -> GPT:
    """A GPT of the base's shape with no memory but for the block linears' weights, which are CPU stand-ins without
    storage (stride 0): `apply_lora` puts adapters beside them on the CPU, drawing from the CPU RNG as a trial alone
    does; `PackedGPT._attach` then swaps in the real base tensors."""
    from model.gpt2 import GPT

    with torch.device("meta"):
        shell = GPT(base.config)
    dtype = base.transformer.wte.weight.dtype
    for block in shell.transformer.h:
        for path in BLOCK_LINEARS:
            linear = block.get_submodule(path)
            linear.weight = nn.Parameter(_stand_in(linear.weight.shape, dtype), requires_grad=False)
            if linear.bias is not None:
                linear.bias = nn.Parameter(_stand_in(linear.bias.shape, dtype), requires_grad=False)
    return shell


def _stand_in(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros((), dtype=dtype).expand(shape)


def _drop_adapters(block: nn.Module) -> None:
    """Remove a frozen block's adapters without merging them (they are at their start; the base is shared)."""
    for name, module in [(n, m) for n, m in block.named_modules() if isinstance(m, AdaptedLinear)]:
        out_dim, in_dim = module.weight.shape
        linear = nn.Linear(in_dim, out_dim, bias=module.bias is not None, device="meta")
        linear.weight, linear.bias = module.weight, module.bias
        _set_module(block, name, linear)
