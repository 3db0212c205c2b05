"""What a packed trial's metrics.json says about memory and time it shared with the other members of its pack.

Memory. A pack holds one base and, per member, adapters, gradients, optimizer state and activations; its peak is
measured once for the whole pack (`runtime.PeakMemory`, started with the pack). A member's record keeps the measured
figure as `pack_peak_memory_mb` and gives, as `peak_memory_mb`, an estimate of the trial's own peak:

    peak_memory_mb = pack_base_memory_mb + (pack_peak_memory_mb - pack_base_memory_mb) / pack_size

the shared part (process, data, base weights: what the pack held before its first member) once, plus an equal share
of what the members added above it; `pack_size` is the most members the pack held at once while this one was in
it. `peak_memory_own` is false and `peak_memory_source` names the rule, so the figure is never taken for a
measurement of the trial alone.

Time. Each packed optimizer step runs the members' micro-batches in one forward and one backward, then each
member's own optimizer step. A member's step time is its share of the shared part, apportioned by its share of the
step's padded positions (rows x padded length: the compute its rows occupy), plus its own optimizer step; the
members' step times add up to the pack's. Its `tokens_per_s` is its real tokens over those times (steady-state, as
alone: `tasks.train.costs`), `train_time_s` their sum; `wall_time_s` runs from the moment it joined to its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.train.loop import FitState
from tasks.train.record import Recorder
from tasks.train.runtime import PeakMemory

MEMORY_RULE = "base + (peak - base) / members"
TIME_RULE = "share of each packed step by padded positions, plus its own optimizer step"


@dataclass
class PackShare:
    """The pack's figures a member's record needs, updated while the member is in the pack."""

    pack_id: str
    memory: PeakMemory
    base_mb: float | None  # what the pack held before its first member
    size: int = 1  # the most members held at once while this member was in the pack

    def seen(self, members: int) -> None:
        self.size = max(self.size, members)

    def figures(self) -> dict[str, Any]:
        """metrics.json's memory fields for the member, and the pack's own figures beside them."""
        peak = self.memory.megabytes()
        base = self.base_mb if self.base_mb is not None else 0.0
        return {
            "peak_memory_mb": base + (peak - base) / self.size,
            "peak_memory_source": f"pack of {self.size}: {MEMORY_RULE} ({self.memory.source})",
            "peak_memory_own": False,
            "pack_id": self.pack_id,
            "pack_size": self.size,
            "pack_peak_memory_mb": peak,
            "pack_base_memory_mb": self.base_mb,
            "train_time_source": f"pack of {self.size}: {TIME_RULE}",
        }


@dataclass(frozen=True)
class MemberRecorder(Recorder):
    """A `Recorder` whose metrics.json says what the trial shared with its pack (module docstring)."""

    share: PackShare | None = None

    def payload(self, state: FitState, metrics: dict[str, Any], *, status: str) -> dict[str, Any]:
        out = super().payload(state, metrics, status=status)
        if self.share is not None:
            out.update(self.share.figures())
        return out
