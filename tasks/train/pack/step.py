"""One packed optimizer step: every member's micro-batches in one forward and one backward, then each its own step.

Micro-batch r of every member that has one is right-padded to the longest row among them and stacked (the causal
mask keeps padding out of every real token's result, as in a batch alone). The packed forward gives each member's
output for its rows; the member's loss is its task's own `compute_loss` on those (through `_MemberRows`, which
answers the model calls `compute_loss` makes). The losses, each weighted by its micro-batch's share of the member's
targets as `loop.train_step` weights them, are summed and backpropagated once: members share no trainable tensor,
so each one's gradient is its own. Then every member clips and steps with its own optimizer (`loop.apply_step`): a
non-finite loss fails that member alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tasks.batching import IGNORE_INDEX
from tasks.tokenizer import EOT_ID
from tasks.train.errors import NonFiniteLossError
from tasks.train.loop import apply_step, group_tokens, loss_tokens, record_step, to_device

Batch = Mapping[str, torch.Tensor]


@dataclass
class StepItem:
    """A member's part of a packed step: its micro-batches (CPU) and learning rate."""

    member: Any  # tasks.train.pack.member.Member
    group: list[Batch]
    lr: float


class _MemberRows:
    """Stands in for the model inside `task.compute_loss`: answers with what the packed forward computed for one
    member's rows (class logits, or the summed next-token NLL)."""

    def __init__(self, output: torch.Tensor) -> None:
        self.output = output

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.output

    def lm_loss(
        self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:  # fmt: skip
        if reduction != "sum":
            raise ValueError(f"a packed trial's LM loss is summed per member, but got reduction={reduction!r}")
        return self.output


def stack(batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    """Right-pad the batches to the longest row among them and stack them (row order kept)."""
    width = max(b["input_ids"].shape[1] for b in batches)
    out = {
        "input_ids": torch.cat([F.pad(b["input_ids"], (0, width - b["input_ids"].shape[1]), value=EOT_ID)
                                for b in batches]),
        "attention_mask": torch.cat([F.pad(b["attention_mask"], (0, width - b["attention_mask"].shape[1]))
                                     for b in batches]),
    }  # fmt: skip
    labels = [b["labels"] for b in batches]
    if labels[0].dim() == 2:  # language modelling: no loss on padding
        labels = [F.pad(lab, (0, width - lab.shape[1]), value=IGNORE_INDEX) for lab in labels]
    out["labels"] = torch.cat(labels)
    return out


def packed_step(pack: Any, items: list[StepItem]) -> dict[str, BaseException]:
    """One optimizer step of each member in `items`; returns the members whose step failed (key -> error)."""
    start = time.perf_counter()
    totals = [sum(loss_tokens(b) for b in item.group) for item in items]
    losses, slots = [0.0] * len(items), [0] * len(items)
    for r in range(max(len(item.group) for item in items)):
        parts = [i for i, item in enumerate(items) if r < len(item.group) and loss_tokens(item.group[r]) > 0]
        if not parts:
            continue
        shares = _micro_step(pack, [items[i] for i in parts], r, [totals[i] for i in parts])
        for i, (loss, positions) in zip(parts, shares, strict=True):
            losses[i] += loss
            slots[i] += positions
    shared_s, total_slots = time.perf_counter() - start, max(sum(slots), 1)
    failed: dict[str, BaseException] = {}
    for i, item in enumerate(items):
        member, t = item.member, time.perf_counter()
        try:
            apply_step(member.optimizer, losses[i], step=member.state.step, lr=item.lr,
                       grad_clip=member.cfg.trainer.grad_clip, scaler=member.scaler)  # fmt: skip
        except NonFiniteLossError as e:
            failed[member.key] = e
            continue
        seconds = shared_s * slots[i] / total_slots + time.perf_counter() - t
        record_step(member.state, seconds, group_tokens(item.group), losses[i], item.lr)
    return failed


def _micro_step(pack: Any, items: list[StepItem], r: int, totals: list[int]) -> list[tuple[float, int]]:
    """Forward and backward of micro-batch `r` of each item, stacked; per item (its weighted loss, its positions)."""
    batches = [item.group[r] for item in items]
    batch = to_device(stack(batches), pack.runtime.device)
    rows = [b["input_ids"].shape[0] for b in batches]
    segments = [(item.member.key, n) for item, n in zip(items, rows, strict=True)]
    with pack.runtime.autocast():
        outputs = _outputs(pack, batch, segments)
        split = {k: v.split(rows) for k, v in batch.items()}
        losses = [
            pack.task.compute_loss(_MemberRows(output), {k: parts[i] for k, parts in split.items()})[0]
            for i, output in enumerate(outputs)
        ]
    shares = [loss_tokens(b) / total for b, total in zip(batches, totals, strict=True)]
    weighted = []
    for item, loss, share in zip(items, losses, shares, strict=True):
        scaled = loss * share
        weighted.append(item.member.scaler.scale(scaled) if item.member.scaler is not None else scaled)
    sum(weighted).backward()  # type: ignore[union-attr]
    width = batch["input_ids"].shape[1]
    return [(float(loss.detach()) * share, n * width) for loss, share, n in zip(losses, shares, rows, strict=True)]


def _outputs(pack: Any, batch: dict[str, torch.Tensor], segments: list[tuple[str, int]]) -> list[torch.Tensor]:
    """Each member's output for its rows: summed NLL (language modelling) or class logits (classification)."""
    packed = pack.model
    if pack.task.kind == "lm":
        return packed.lm_losses(batch["input_ids"], batch["labels"], batch["attention_mask"], segments)
    logits = packed(batch["input_ids"], batch["attention_mask"], segments)
    return list(logits.split([n for _, n in segments]))
