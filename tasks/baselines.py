"""Reference points every trial is read against, and the flags of a trial that learned nothing.

- The majority class (classification): always predict the train split's most frequent class; its accuracy and
  macro-F1 on the validation and test splits. On SMS spam that is 0.865 accuracy with no training at all.
- The untouched model: the validation metrics before the first optimizer step (step 0 of the validation curve),
  recorded by the trial as `baseline_val_<metric>`.

A trial is flagged when its selected validation accuracy is at the majority class, or when its watched validation
metric is no better than the untouched model's; `learned` is false when any flag is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tasks.metrics import MINIMIZE, accuracy, macro_f1

AT_MAJORITY = "at majority class"
NOT_BETTER_THAN_UNTOUCHED = "no better than the untouched model"
MIN_MARGIN = 0.005  # 0.5 accuracy points: a smaller gain is no learning
RELATIVE_MARGIN = 0.005  # loss and perplexity: a drop of under 0.5% is no learning


def majority_baseline(
    train_labels: np.ndarray, splits: Mapping[str, np.ndarray], class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """The train split's majority class and, per split, the accuracy and macro-F1 of always predicting it.

    Keys: `majority_class` (its name, or id), `majority_<split>_accuracy`, `majority_<split>_macro_f1`.
    """
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64))
    top = int(np.argmax(counts))  # ties: the lowest class id
    out: dict[str, Any] = {"majority_class": class_names[top] if class_names else top}
    for split, labels in splits.items():
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size == 0:
            continue
        preds = np.full_like(labels, top)
        out[f"majority_{split}_accuracy"] = accuracy(preds, labels)
        out[f"majority_{split}_macro_f1"] = macro_f1(preds, labels)
    return out


def accuracy_margin(n_rows: int) -> float:
    """The smallest accuracy gain that counts as learning: one row's worth, at least 0.5 points."""
    return max(MIN_MARGIN, 1.0 / n_rows) if n_rows > 0 else MIN_MARGIN


def learning_flags(metrics: Mapping[str, Any], watch_key: str, direction: str, n_val_rows: int) -> list[str]:
    """Why a trial learned nothing (empty when it did).

    `metrics` holds the selected point's `val_*` metrics, the `majority_val_accuracy` and `baseline_val_*` keys;
    `watch_key` is the validation metric the loop selected on, `n_val_rows` the validation split's size.
    """
    flags = []
    margin = accuracy_margin(n_val_rows)
    val_acc, majority = metrics.get("val_accuracy"), metrics.get("majority_val_accuracy")
    if val_acc is not None and majority is not None and val_acc <= majority + margin:
        flags.append(AT_MAJORITY)
    value, untouched = metrics.get(watch_key), metrics.get("baseline_" + watch_key)
    if value is not None and untouched is not None and not _gained(value, untouched, direction, watch_key, margin):
        flags.append(NOT_BETTER_THAN_UNTOUCHED)
    return flags


def _gained(value: float, untouched: float, direction: str, key: str, margin: float) -> bool:
    if direction == MINIMIZE:  # loss, perplexity: a relative drop
        return value < untouched * (1 - RELATIVE_MARGIN)
    if key.endswith(("accuracy", "macro_f1")):  # fractions: the same margin as the majority test
        return value > untouched + margin
    return value > untouched * (1 + RELATIVE_MARGIN)
