"""Batches: right padding to the longest row of each batch, label masks, determinism, length buckets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.batching import IGNORE_INDEX, TokenizedSplit, iterate_batches

PAD = 50256


def _lm_split(mask_prompt: bool = True) -> TokenizedSplit:
    rows = [[10, 11, 12, 13, 50256], [20, 21, 50256], [30, 31, 32, 33, 34, 35, 50256]]
    return TokenizedSplit.from_rows(rows, prompt_lens=[2, 1, 4], mask_prompt=mask_prompt)


def test_lm_batch_pads_right_to_longest_row_and_masks_prompt() -> None:
    batch = next(iter(iterate_batches(_lm_split(), 2)))
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 50256], [20, 21, 50256, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    x = IGNORE_INDEX
    # loss exactly on the response and <|endoftext|>; never on the prompt or padding
    assert batch["labels"].tolist() == [[x, x, 12, 13, 50256], [x, 21, 50256, x, x]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_unmasked_prompt_trains_on_everything_but_position_zero_and_padding() -> None:
    batch = next(iter(iterate_batches(_lm_split(mask_prompt=False), 2)))
    x = IGNORE_INDEX
    assert batch["labels"].tolist() == [[x, 11, 12, 13, 50256], [x, 21, 50256, x, x]]


def test_classification_batch() -> None:
    split = TokenizedSplit.from_rows([[1, 2, 3], [4], [5, 6]], labels=[1, 0, 1])
    batches = list(iterate_batches(split, 2))
    assert [b["input_ids"].shape for b in batches] == [(2, 3), (1, 2)]
    assert batches[0]["labels"].tolist() == [1, 0]
    assert batches[1]["input_ids"].tolist() == [[5, 6]]


def _rows_seen(batches) -> list[int]:
    """Recover each row's id from its first token (rows are [i, ...])."""
    return [int(b["input_ids"][r, 0]) for b in batches for r in range(b["input_ids"].shape[0])]


def _numbered_split(n: int = 103) -> TokenizedSplit:
    rng = np.random.default_rng(0)
    rows = [[i] + [7] * int(rng.integers(0, 40)) for i in range(n)]
    return TokenizedSplit.from_rows(rows, labels=[i % 3 for i in range(n)])


@pytest.mark.parametrize("bucket", [None, 4])
def test_every_row_once_and_deterministic_per_seed_and_epoch(bucket: int | None) -> None:
    split = _numbered_split()
    a = iterate_batches(split, 8, shuffle=True, seed=1, epoch=0, bucket=bucket)
    assert len(a) == 13
    seen = _rows_seen(a)
    assert sorted(seen) == list(range(103))
    assert seen == _rows_seen(iterate_batches(split, 8, shuffle=True, seed=1, epoch=0, bucket=bucket))
    assert seen != _rows_seen(iterate_batches(split, 8, shuffle=True, seed=1, epoch=1, bucket=bucket))
    assert seen != _rows_seen(iterate_batches(split, 8, shuffle=True, seed=2, epoch=0, bucket=bucket))


def test_length_buckets_cut_padding() -> None:
    split = _numbered_split(400)

    def padding(batches) -> int:
        return sum(int((b["attention_mask"] == 0).sum()) for b in batches)

    plain = padding(iterate_batches(split, 8, shuffle=True, seed=0))
    bucketed = padding(iterate_batches(split, 8, shuffle=True, seed=0, bucket=10))
    assert bucketed < plain / 3
    # evaluation order (no shuffle) with buckets: the whole split sorted by length
    lengths = [int(b["attention_mask"].sum(1).max()) for b in iterate_batches(split, 8, bucket=1)]
    assert lengths == sorted(lengths)


def test_drop_last_and_bad_arguments() -> None:
    split = _numbered_split(10)
    assert len(iterate_batches(split, 4, drop_last=True)) == 2
    assert len(list(iterate_batches(split, 4, drop_last=True))) == 2
    with pytest.raises(ValueError, match="batch_size > 0"):
        iterate_batches(split, 0)
    with pytest.raises(ValueError, match="bucket > 0"):
        iterate_batches(split, 2, bucket=0)
