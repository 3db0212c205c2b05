"""`trainer.max_eval_batches`: a capped evaluation is a fixed, representative sample of the split.

The same rows at every evaluation of every trial (seeded from the split's content, never from `trainer.seed`), drawn
over the whole split (not its shortest rows), then batched sorted by length within the sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pytest
import torch

from tasks import get_task
from tasks.train.build import build_model
from tasks.train.loop import FitState, evaluate, fit
from tasks.train.runtime import resolve_runtime

BATCH, CAP = 8, 6  # 48 rows of the split


class Recording:
    """The task, with every evaluated batch's rows (token ids without padding) written down."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.evaluations: list[list[tuple[int, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
        rows: list[tuple[int, ...]] = []
        seen = []
        for batch in batches:
            seen.append(batch)
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                rows.append(tuple(ids[mask.bool()].tolist()))
        self.evaluations.append(rows)
        return self.task.evaluate(model, seen)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov distance between the empirical distributions of `a` and `b`."""
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


@pytest.fixture
def sms(compose_cfg, shared_data):
    cfg = compose_cfg(
        "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}", "finetune=full",
        "trainer.device=cpu", f"trainer.batch_size={BATCH}", f"trainer.max_eval_batches={CAP}", "trainer.max_steps=2",
        "trainer.eval_every=1", "trainer.bucket=null",
    )  # fmt: skip
    task = get_task(cfg.task)
    data = task.load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir)
    return cfg, task, data


def test_a_capped_evaluation_is_a_representative_sample_batched_by_length(sms):
    cfg, task, data = sms
    runtime = resolve_runtime("cpu", "fp32")
    model = build_model(cfg, task.num_classes, runtime)
    recording = Recording(task)
    capped = evaluate(model, recording, data.val, runtime, batch_size=BATCH, max_batches=CAP)
    (rows,) = recording.evaluations
    assert len(rows) == BATCH * CAP < len(data.val)

    split_lengths = data.val.lengths
    sample_lengths = np.array([len(r) for r in rows])
    # the shortest-rows bug gives a distance near 1 and a longest row below the split's median
    assert ks_statistic(sample_lengths, split_lengths) < 0.25, (np.median(sample_lengths), np.median(split_lengths))
    assert sample_lengths.max() > np.quantile(split_lengths, 0.75)
    assert sample_lengths.mean() == pytest.approx(split_lengths.mean(), rel=0.25)
    # sorted by length within the sample: batches carry little padding
    assert list(sample_lengths) == sorted(sample_lengths)
    assert sample_lengths.min() <= np.quantile(split_lengths, 0.25)
    assert set(capped) == {"loss", "accuracy", "macro_f1"}


def test_a_capped_evaluation_holds_the_same_rows_at_every_evaluation_of_every_trial(sms, compose_cfg, shared_data):
    cfg, task, data = sms
    runtime = resolve_runtime("cpu", "fp32")
    recorded = []
    for seed in (1, 2):  # the trial seed changes the model and the batch order, never the evaluated rows
        cfg.trainer.seed = seed
        torch.manual_seed(seed)
        model = build_model(cfg, task.num_classes, runtime)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        recording = Recording(task)
        fit(model, recording, data, optimizer, runtime, cfg, state=FitState(), eval_key="val_accuracy",
            eval_direction="maximize", report=False)  # fmt: skip
        recorded += recording.evaluations
    assert len(recorded) == 6  # three evaluations per trial: the untouched model at step 0, then two
    assert all(rows == recorded[0] for rows in recorded)
    assert len(recorded[0]) == BATCH * CAP

    # another split content draws another sample (seeded from the data), of the same size
    other = task.load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir).test
    recording = Recording(task)
    evaluate(build_model(cfg, task.num_classes, runtime), recording, other, runtime, batch_size=BATCH, max_batches=CAP)
    assert len(recording.evaluations[0]) == BATCH * CAP and recording.evaluations[0] != recorded[0]


def test_samples_are_nested_and_keep_each_rows_tokens_and_prompt_length():
    from tasks.batching import TokenizedSplit
    from tasks.sampling import fixed_sample

    rows = [list(range(i, i + 1 + i % 7)) for i in range(50)]
    split = TokenizedSplit.from_rows(rows, prompt_lens=[i % 3 for i in range(50)], mask_prompt=False)
    small, large = fixed_sample(split, 10), fixed_sample(split, 20)
    small_rows = {tuple(small.row(i)) for i in range(len(small))}
    assert len(small) == 10 and small_rows <= {tuple(large.row(i)) for i in range(len(large))}
    for i in range(len(large)):
        original = rows.index(large.row(i))
        assert large.prompt_lens[i] == original % 3
    assert large.mask_prompt is False
    assert fixed_sample(split, 50) is split
