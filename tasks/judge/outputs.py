"""Which files hold a run's generations and judge scores, per split, and the metric names their summary takes.

A search trial generates for a fixed subset of the validation split (`val_generations.jsonl`, `val_judge.jsonl`,
`val_judge_summary.json`, metrics `val_rouge_l`, `val_judge_mean`, ...); a confirmation run also for the test split
(`test_*`). Runs from before the split prefix wrote `generations.jsonl` for the test prompts with unprefixed metric
names (`judge_mean`); split "" names those, so `python -m tasks.judge RUN_DIR` still re-scores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENERATED_SPLITS = ("val", "test")
LEGACY = ""  # a run from before the split prefix (its generations were the test prompts)


@dataclass(frozen=True)
class SplitOutputs:
    """The files of one generated split and the prefix of its metric names."""

    split: str  # "val" | "test" | LEGACY

    @property
    def prefix(self) -> str:
        return f"{self.split}_" if self.split else ""

    @property
    def generations(self) -> str:
        return f"{self.prefix}generations.jsonl"

    @property
    def judge(self) -> str:
        return f"{self.prefix}judge.jsonl"

    @property
    def summary(self) -> str:
        return f"{self.prefix}judge_summary.json"

    def metric_names(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """The scoring summary under this split's metric names (`rouge_l` → `val_rouge_l`)."""
        return {f"{self.prefix}{k}": v for k, v in summary.items()}

    def owns(self, metric: str) -> bool:
        """Whether `metric` is one of this split's generation or judge metrics (replaced when re-scored)."""
        bare = metric.removeprefix(self.prefix) if self.prefix else metric
        if self.prefix and bare == metric:
            return False
        return bare.startswith("judge_") or bare in ("rouge_l", "exact_match", "exact_match_n")


def outputs_of(split: str) -> SplitOutputs:
    if split not in (*GENERATED_SPLITS, LEGACY):
        raise ValueError(f"split must be one of {', '.join(GENERATED_SPLITS)}, but got split={split!r}")
    return SplitOutputs(split)


def generated_in(run_dir: Path) -> list[SplitOutputs]:
    """The splits a run folder holds generations for (validation first, then test, then a pre-prefix run's)."""
    found = [outputs_of(s) for s in (*GENERATED_SPLITS, LEGACY)]
    return [o for o in found if (run_dir / o.generations).is_file()]
