"""Tokenized splits as flat arrays, and batches padded on the right to the longest row of each batch.

A split stores every row's ids back to back (``tokens``) with ``offsets`` marking where each row starts: cheap to
cache with numpy, and a batch is built with array indexing, never a Python loop over tokens.

Batch (``torch.long`` tensors):
- ``input_ids`` (B, T), padded with ``pad_id`` (50256, ``<|endoftext|>``) after each row's last token;
- ``attention_mask`` (B, T), 1 on real tokens;
- ``labels``: (B,) class ids for classification; (B, T) for language modelling, aligned with ``input_ids``
  (Hugging Face convention, the model shifts) and -100 on padding, on position 0 (nothing predicts it) and, when
  the split masks its prompt, on every prompt position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tasks.tokenizer import EOT_ID

IGNORE_INDEX = -100


@dataclass
class TokenizedSplit:
    """One split: rows of token ids plus class labels (classification) or prompt lengths (language modelling)."""

    tokens: np.ndarray  # (total_tokens,) int32, rows back to back
    offsets: np.ndarray  # (n + 1,) int64; row i is tokens[offsets[i]:offsets[i + 1]]
    labels: np.ndarray | None = None  # (n,) int64 class ids
    prompt_lens: np.ndarray | None = None  # (n,) int64 tokens before the response
    mask_prompt: bool = True  # no loss on prompt tokens (language modelling only)

    @classmethod
    def from_rows(
        cls,
        rows: list[list[int]],
        *,
        labels: list[int] | np.ndarray | None = None,
        prompt_lens: list[int] | np.ndarray | None = None,
        mask_prompt: bool = True,
    ) -> TokenizedSplit:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
        return cls(
            tokens=tokens,
            offsets=offsets,
            labels=None if labels is None else np.asarray(labels, dtype=np.int64),
            prompt_lens=None if prompt_lens is None else np.asarray(prompt_lens, dtype=np.int64),
            mask_prompt=mask_prompt,
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def kind(self) -> str:
        return "classification" if self.labels is not None else "lm"

    def row(self, i: int) -> list[int]:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]].tolist()

    def take(self, rows: np.ndarray) -> TokenizedSplit:
        """A new split of `rows` (indices into this one), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, lengths = self.offsets[rows], np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)
        return TokenizedSplit(
            tokens=self.tokens[index],
            offsets=offsets,
            labels=None if self.labels is None else self.labels[rows],
            prompt_lens=None if self.prompt_lens is None else self.prompt_lens[rows],
            mask_prompt=self.mask_prompt,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to store (token cache)."""
        out = {"tokens": self.tokens, "offsets": self.offsets}
        if self.labels is not None:
            out["labels"] = self.labels
        if self.prompt_lens is not None:
            out["prompt_lens"] = self.prompt_lens
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenizedSplit):
            return NotImplemented
        mine, theirs = self.arrays(), other.arrays()
        return (
            mine.keys() == theirs.keys()
            and all(np.array_equal(mine[k], theirs[k]) for k in mine)
            and self.mask_prompt == other.mask_prompt
        )


def collate(split: TokenizedSplit, rows: np.ndarray, pad_id: int = EOT_ID) -> dict[str, torch.Tensor]:
    """The batch of `rows` (indices into `split`), right-padded to its longest row."""
    rows = np.asarray(rows, dtype=np.int64)
    starts, lengths = split.offsets[rows], split.offsets[rows + 1] - split.offsets[rows]
    width = int(lengths.max())
    positions = np.arange(width, dtype=np.int64)
    real = positions[None, :] < lengths[:, None]  # (B, T)
    index = np.minimum(starts[:, None] + positions[None, :], max(len(split.tokens) - 1, 0))
    input_ids = np.where(real, split.tokens[index], pad_id).astype(np.int64)
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(real.astype(np.int64))}
    if split.labels is not None:
        batch["labels"] = torch.from_numpy(split.labels[rows])
    else:
        target = real & (positions[None, :] > 0)
        if split.mask_prompt and split.prompt_lens is not None:
            target &= positions[None, :] >= split.prompt_lens[rows][:, None]
        batch["labels"] = torch.from_numpy(np.where(target, input_ids, IGNORE_INDEX))
    return batch


class Batches:
    """An iterable of batches over a split with a known length, deterministic for (seed, epoch).

    Args:
        split: the tokenized split.
        batch_size: rows per batch (the last batch may be smaller unless ``drop_last``).
        shuffle: draw a new row order per (seed, epoch).
        seed: with ``epoch``, seeds the order.
        epoch: pass the epoch number so each epoch sees a different order.
        pad_id: the padding id (masked by ``attention_mask``).
        bucket: sort rows by length within windows of ``bucket`` batches (then shuffle the batches) so batches
            hold similar lengths and carry little padding; ``None`` keeps the plain order. Without shuffle the
            whole split is sorted, which is what evaluation wants.
        drop_last: skip a final short batch.
    """

    def __init__(
        self,
        split: TokenizedSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        pad_id: int = EOT_ID,
        bucket: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"`batch_size > 0` must hold, but got batch_size={batch_size!r}")
        if bucket is not None and bucket <= 0:
            raise ValueError(f"`bucket > 0` (batches per length bucket) must hold, but got bucket={bucket!r}")
        if len(split) == 0:
            raise ValueError("the split must hold at least one row, but got an empty split")
        self.split, self.batch_size, self.pad_id, self.drop_last = split, batch_size, pad_id, drop_last
        self.shuffle, self.seed, self.epoch, self.bucket = shuffle, seed, epoch, bucket

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_indices(self) -> list[np.ndarray]:
        """The row indices of each batch, in iteration order."""
        n, bs = len(self.split), self.batch_size
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucket is not None:
            lengths = self.split.lengths
            window = n if not self.shuffle else self.bucket * bs
            chunks = [order[i : i + window] for i in range(0, n, window)]
            order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + bs] for i in range(0, n, bs)]
        if self.drop_last and len(batches[-1]) < bs:
            batches.pop()
        if self.bucket is not None and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for rows in self.batch_indices():
            yield collate(self.split, rows, self.pad_id)


def iterate_batches(
    split: TokenizedSplit,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    pad_id: int = EOT_ID,
    bucket: int | None = None,
    drop_last: bool = False,
) -> Batches:
    """Batches of `split` (see `Batches`); ``len()`` gives their number."""
    return Batches(
        split, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, pad_id=pad_id, bucket=bucket, drop_last=drop_last
    )
