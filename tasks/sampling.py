"""A fixed, representative sample of a split, for evaluations capped by `trainer.max_eval_batches`.

Capping an evaluation by taking its first batches would score whatever the order puts first (sorted by length: only
the shortest rows), which biases the objective and every pruning decision. The sample is instead a uniform draw
over the whole split, seeded from the split's own content: the same rows at every evaluation of every trial on the
same data, whatever `trainer.seed` says. Samples of different sizes are nested (a smaller cap takes a prefix of
the same draw), so trials with different evaluation batch sizes share the rows they have in common.
"""

from __future__ import annotations

import hashlib

import numpy as np

from tasks.batching import TokenizedSplit


def content_seed(split: TokenizedSplit) -> int:
    """A 64-bit seed from the split's arrays: equal splits draw equal samples, any changed row another."""
    digest = hashlib.sha256()
    for name, array in sorted(split.arrays().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return int.from_bytes(digest.digest()[:8], "little")


def fixed_sample(split: TokenizedSplit, n_rows: int) -> TokenizedSplit:
    """`n_rows` rows of `split` drawn uniformly without replacement (seeded by `content_seed`), in split order;
    the split itself when it holds no more than that."""
    if n_rows >= len(split):
        return split
    rng = np.random.default_rng(content_seed(split))
    rows = np.sort(rng.permutation(len(split))[:n_rows])
    return split.take(rows)
