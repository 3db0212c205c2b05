"""Task metrics as small pure functions, and the objective table that maps names to metrics.json keys.

`tasks.resolvers` registers `objective_direction` as the `${direction:...}` resolver that conf/config.yaml uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import ListConfig

MAXIMIZE, MINIMIZE = "maximize", "minimize"

# objective name -> (metrics.json key, direction); see ARCHITECTURE.md "Objectives and metric names". Every key is a
# validation metric: test data never steers a search (generations and the judge run on a fixed validation subset)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy": ("val_accuracy", MAXIMIZE),
    "macro_f1": ("val_macro_f1", MAXIMIZE),
    "loss": ("val_loss", MINIMIZE),
    "perplexity": ("val_perplexity", MINIMIZE),
    "judge": ("val_judge_mean", MAXIMIZE),
    "rouge_l": ("val_rouge_l", MAXIMIZE),
}

# what the validation loop measures (task.evaluate): the metrics it can watch for early stopping and pruning
LOOP_METRICS = frozenset({"loss", "accuracy", "macro_f1", "perplexity"})
# what alpaca's generations give (tasks.judge): measured once, at the end, on the split's prompts
GENERATION_METRICS = frozenset({"rouge_l", "exact_match", "judge_mean"})

# metrics.json keys that may be named directly as objectives (e.g. accuracy vs trainable_params); test_* keys
# have directions (the report sorts by them) but are refused as objectives
METRIC_DIRECTIONS: dict[str, str] = {
    **{f"{split}_{m}": MAXIMIZE for split in ("val", "test") for m in ("accuracy", "macro_f1")},
    **{f"{split}_{m}": MINIMIZE for split in ("val", "test") for m in ("loss", "perplexity")},
    **{f"{split}_{m}": MAXIMIZE for split in ("val", "test") for m in sorted(GENERATION_METRICS)},
    "trainable_params": MINIMIZE,
    "trainable_pct": MINIMIZE,
    "peak_memory_mb": MINIMIZE,
    "wall_time_s": MINIMIZE,
    "train_time_s": MINIMIZE,
    "tokens_per_s": MAXIMIZE,
    "step_time_s": MINIMIZE,
}


def objective_key(name: str) -> str:
    """The metrics.json key behind objective `name` (an objective name or a metrics key itself)."""
    if name in OBJECTIVES:
        return OBJECTIVES[name][0]
    if name.startswith("test_"):
        raise ValueError(
            "objective must not be a test metric: test data never steers a search (select on validation, then "
            f"confirm; use {'val_' + name.removeprefix('test_')!r}), but got objective={name!r}"
        )
    if name in METRIC_DIRECTIONS:
        return name
    allowed = sorted(k for k in METRIC_DIRECTIONS if not k.startswith("test_"))
    raise ValueError(
        f"objective must be one of {sorted(OBJECTIVES)} or a metrics key of {allowed}, but got objective={name!r}"
    )


def objective_direction(name_or_list: Any) -> str | list[str]:
    """``maximize`` or ``minimize`` for an objective name; a list of them for a list of names."""
    if isinstance(name_or_list, (list, tuple, ListConfig)):
        return [objective_direction(n) for n in name_or_list]  # type: ignore[misc]
    key = objective_key(str(name_or_list))
    return OBJECTIVES[name_or_list][1] if name_or_list in OBJECTIVES else METRIC_DIRECTIONS[key]


def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Share of predictions equal to their label."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.size == 0:
        raise ValueError(
            f"preds and labels must be equal-length and non-empty, but got {preds.shape} and {labels.shape}"
        )
    return float((preds == labels).mean())


def macro_f1(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions (as scikit-learn).

    The report's imbalanced task (747 spam of 5,574) makes accuracy flatter a majority-class model; macro-F1 does not.
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.size == 0:
        raise ValueError(
            f"preds and labels must be equal-length and non-empty, but got {preds.shape} and {labels.shape}"
        )
    scores = []
    for c in np.union1d(preds, labels):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp of the mean negative log-likelihood per token (natural log); inf when it overflows."""
    if n_tokens <= 0:
        raise ValueError(f"`n_tokens > 0` must hold, but got n_tokens={n_tokens}")
    mean = nll_sum / n_tokens
    return math.exp(mean) if mean < 700 else math.inf
