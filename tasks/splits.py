"""Carving train/validation/test splits with a seed: sizes as counts or fractions, stratified by class.

Sizes come from ``task.train_size``/``val_size``/``test_size``: an int is a number of rows, a float in (0, 1) a
fraction of the rows it is drawn from, ``null`` all of a split that exists upstream (or 10% when it has to be
carved). Data too small for the sizes is an error naming the keys to lower, never a silent shrink.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.sources import DataError

DEFAULT_CARVE_FRACTION = 0.1
SIZE_KEYS = ("train_size", "val_size", "test_size")


def size_problem(key: str, value: Any) -> str | None:
    """Why `value` is not a valid split size, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"task.{key} must be an int (rows), a float in (0, 1) (a fraction) or null, but got {key}={value!r}"
    if isinstance(value, int) and value < 1:
        return f"`task.{key} >= 1` must hold for a row count, but got {key}={value}"
    if isinstance(value, float) and not 0.0 < value < 1.0:
        return f"`0 < task.{key} < 1` must hold for a fraction, but got {key}={value}"
    return None


def rows_for(value: int | float | None, available: int, *, default: float | None) -> int | None:
    """Rows a size asks for out of `available` (None: all, when `default` is None)."""
    if value is None:
        value = default
    if value is None:
        return None
    if isinstance(value, float):
        return max(1, round(value * available))
    return int(value)


def stratified_take(
    labels: np.ndarray, pool: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`n` rows of `pool` (indices into `labels`) keeping class proportions; returns (taken, rest), each sorted.

    Each class gets its proportional share rounded down, and the leftover rows go to the largest remainders, so
    the total is exactly `n`.
    """
    if n > len(pool):
        raise ValueError(f"cannot take {n} rows from {len(pool)}")
    classes, inverse, counts = np.unique(labels[pool], return_inverse=True, return_counts=True)
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    extra = n - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    taken = []
    for c in range(len(classes)):
        members = pool[inverse == c]
        taken.append(rng.permutation(members)[: take[c]])
    chosen = np.sort(np.concatenate(taken)) if taken else np.empty(0, dtype=np.int64)
    return chosen, np.setdiff1d(pool, chosen, assume_unique=True)


def balance_classes(labels: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Undersample every class of `pool` to the smallest class's count (LLMs-from-scratch, ch. 6); sorted."""
    classes, counts = np.unique(labels[pool], return_counts=True)
    keep = [rng.permutation(pool[labels[pool] == c])[: counts.min()] for c in classes]
    return np.sort(np.concatenate(keep))


def carve(
    labels: dict[str, np.ndarray],
    sizes: dict[str, Any],
    seed: int,
    *,
    balance: bool = False,
    what: str = "the data",
) -> dict[str, tuple[str, np.ndarray]]:
    """Decide which rows form train/val/test.

    Args:
        labels: per upstream split (``train`` always; ``val``/``test`` when the data has them), the class id of
            each row (stratification key).
        sizes: ``train_size``, ``val_size``, ``test_size`` as in the module docstring.
        seed: the split seed; the same seed gives the same splits.
        balance: undersample the classes of ``train`` (the pool val/test are carved from) to equal counts first.
        what: names the data in errors.

    Returns:
        ``{"train"|"val"|"test": (upstream split, row indices)}``.
    """
    rng = np.random.default_rng(seed)
    pool = np.arange(len(labels["train"]))
    if balance:
        pool = balance_classes(labels["train"], pool, rng)
    out: dict[str, tuple[str, np.ndarray]] = {}
    carved = [s for s in ("test", "val") if s not in labels]
    wanted = {s: rows_for(sizes.get(f"{s}_size"), len(pool), default=DEFAULT_CARVE_FRACTION) for s in carved}
    train_rows = sizes.get("train_size")
    need = sum(wanted.values()) + (train_rows if isinstance(train_rows, int) else 1)
    if need > len(pool):
        keys = ["train_size", *(f"{s}_size" for s in carved)]
        asked = ", ".join(f"{k}={sizes.get(k)}" for k in keys)
        lower = " or ".join(f"task.{k}" for k in keys)
        raise DataError(
            f"train + carved splits must fit in the {len(pool)} usable rows of {what}, but got {asked} "
            f"(needs {need}); lower {lower}"
        )
    for split in ("test", "val"):
        key = f"{split}_size"
        if split in labels:  # upstream split: all of it, or a stratified subsample
            available = np.arange(len(labels[split]))
            n = rows_for(sizes.get(key), len(available), default=None)
            if n is not None and n > len(available):
                raise DataError(
                    f"task.{key} must be at most the {len(available)} rows of {what}'s {split} split, "
                    f"but got {key}={n}; lower task.{key}"
                )
            taken = available if n is None else stratified_take(labels[split], available, n, rng)[0]
            out[split] = (split, taken)
        else:
            taken, pool = stratified_take(labels["train"], pool, wanted[split], rng)
            out[split] = ("train", taken)
    n = rows_for(train_rows, len(pool), default=None)  # fits: checked above
    out["train"] = ("train", pool if n is None else stratified_take(labels["train"], pool, n, rng)[0])
    return out
