"""What only a trial's run folder knows: metrics.json's `data` block (split sizes, class counts) and its curves.

The study holds metrics.json's scalars; the split sizes, class counts, the model's depth and the curves stay in
`<run_dir>/metrics.json`. The report reads them when the run folder is on this machine and says which trials it
could not read otherwise; it never guesses.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.schema import objective_key

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
GENERATIONS_FILES = ("val_generations.jsonl", "generations.jsonl")  # a run from before the split prefix: the second
# what the trainer records so that the study alone gives the epochs trained (older trials lack it)
MISSING_FIELD_HINT = (
    "top-level `steps_per_epoch` (ceil(ceil(train rows / batch_size) / grad_accum)), stored by the sweeper as a user "
    "attribute"
)


def read_metrics(run_dir: object) -> dict[str, Any] | None:
    """`<run_dir>/metrics.json` as a dict; None when the folder is unknown, elsewhere or the file unreadable."""
    if run_dir is None or (isinstance(run_dir, float) and math.isnan(run_dir)) or not str(run_dir):
        return None
    path = Path(str(run_dir)) / METRICS_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.debug("no readable %s: %s", path, exc)
        return None
    return payload if isinstance(payload, dict) else None


def _split(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    splits = data.get("splits") if isinstance(data, Mapping) else None
    split = splits.get(name) if isinstance(splits, Mapping) else None
    return split if isinstance(split, Mapping) else {}


def steps_per_epoch(train_rows: float, batch_size: float, grad_accum: float) -> float:
    """Optimizer steps in one pass over the training split, as the trainer counts them."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) or v <= 0 for v in (train_rows, batch_size)):
        return math.nan
    accum = 1 if grad_accum is None or (isinstance(grad_accum, float) and math.isnan(grad_accum)) else grad_accum
    return float(math.ceil(math.ceil(train_rows / batch_size) / max(1, int(accum))))


def majority_class(data: Mapping[str, Any]) -> str | None:
    """The most frequent class of the training split (metrics.json's data block), None without class counts."""
    train = _split(data, "train").get("class_counts")
    return max(train, key=lambda name: train[name]) if isinstance(train, Mapping) and train else None


def majority_baseline(data: Mapping[str, Any], objective: str) -> float | None:
    """The validation objective of always predicting the training split's most frequent class.

    Accuracy: that class's share of the validation split; macro-F1: its F1 (2p / (1 + p)) over the class count.
    None for objectives without such a baseline, or without class counts.
    """
    train = _split(data, "train").get("class_counts")
    val = _split(data, "val").get("class_counts")
    if not isinstance(train, Mapping) or not isinstance(val, Mapping) or not train or sum(val.values()) == 0:
        return None
    majority = max(train, key=lambda name: train[name])
    share = val.get(majority, 0) / sum(val.values())
    name = objective.removeprefix("val_")
    if name == "accuracy":
        return share
    if name == "macro_f1":
        return (2 * share / (1 + share)) / len(train)
    return None


def n_layer(preset: object) -> float:
    """Transformer blocks of a GPT-2 size preset (model.gpt2.PRESETS); NaN for an unknown name."""
    try:
        from model.gpt2 import PRESETS  # imports torch: only when a report names frozen blocks
    except ImportError:
        return math.nan
    return float(PRESETS.get(str(preset), {}).get("n_layer", math.nan))


def _known(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def references(row: pd.Series, data: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's reference levels on its objective: always answering the majority class (`majority_val_<metric>`
    as the trainer records it, else from the run folder's class counts) and the untouched model (its step-0
    evaluation, `baseline_val_<metric>`); NaN when not recorded (the judge has no untouched figure)."""
    key = objective_key(str(row.get("objective", "")))
    majority = row.get(f"majority_{key}") if key.startswith("val_") else None
    if not _known(majority) and data:
        majority = majority_baseline(data, key)
    name = row.get("majority_class")
    if _known(majority) and not _known(name):
        name = majority_class(data) if data else None
    untouched = row.get(f"baseline_{key}")
    return {
        "baseline_value": float(majority) if _known(majority) else math.nan,
        "baseline_class": name if _known(majority) and _known(name) else None,
        "untouched_value": float(untouched) if _known(untouched) else math.nan,
    }


def run_columns(row: pd.Series, metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The columns one trial gains from its record (the study first, then its metrics.json): train rows, depth,
    epochs trained, reference levels."""
    data = metrics.get("data", {}) if metrics else {}
    config = metrics.get("config", {}) if metrics else {}
    rows = _split(data, "train").get("rows", math.nan)
    model = config.get("model", {}) if isinstance(config, Mapping) else {}
    preset = model.get("preset") if isinstance(model, Mapping) and model.get("preset") else row.get("model")
    per_epoch = pd.to_numeric(row.get("steps_per_epoch", math.nan), errors="coerce")  # the trainer records it
    if not _known(per_epoch):
        per_epoch = steps_per_epoch(rows, row.get("batch_size", math.nan), row.get("grad_accum", 1))
    steps = pd.to_numeric(row.get("steps", math.nan), errors="coerce")
    return {
        "train_rows": rows,
        "n_layer": n_layer(preset) if row.get("freeze_blocks", 0) else math.nan,
        "steps_per_epoch": per_epoch,
        "epochs_trained": steps / per_epoch if per_epoch and not math.isnan(per_epoch) else math.nan,
        **references(row, data),
        "run_readable": metrics is not None,
    }


def add_run_columns(df: pd.DataFrame, read: bool = True) -> pd.DataFrame:
    """`df` with train_rows, n_layer, steps_per_epoch, epochs_trained, baseline_value (majority class),
    baseline_class, untouched_value and run_readable; `read`: also from each run folder's metrics.json."""
    if df.empty:
        return df.assign(**dict.fromkeys(run_columns(pd.Series(dtype=object), None), pd.Series(dtype=float)))
    extra = [run_columns(row, read_metrics(row.get("run_dir")) if read else None) for _, row in df.iterrows()]
    added = pd.DataFrame(extra, index=df.index)
    return df.drop(columns=[c for c in added if c in df]).join(added)


def generation_sample(run_dir: object, n: int = 20) -> list[dict[str, Any]]:
    """The first `n` rows of an alpaca run's generations.jsonl (prompt, reference, response); [] when absent."""
    if run_dir is None or (isinstance(run_dir, float) and math.isnan(run_dir)):
        return []
    path = next((Path(str(run_dir)) / f for f in GENERATIONS_FILES if (Path(str(run_dir)) / f).is_file()), None)
    if path is None:
        return []
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= n:
                break
    return rows
