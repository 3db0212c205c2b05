"""Reference rows (issue [12] item 4): the majority class and the untouched model, and the flags of a trial that
learned nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tasks.baselines import AT_MAJORITY, NOT_BETTER_THAN_UNTOUCHED, learning_flags, majority_baseline
from tasks.inspect import main as inspect_main
from tasks.train.trial import run_trial


@pytest.fixture
def sms_args(shared_data):
    return [
        "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "finetune=full", "trainer.batch_size=16", "task.max_length=64", "trainer.eval_every=10",
        "trainer.max_steps=20",
    ]  # fmt: skip


def _majority_by_hand(counts: dict[str, int], majority: str) -> tuple[float, float]:
    """Accuracy and macro-F1 of always answering `majority` on a split with these class counts (2 classes): the
    majority class has precision p and recall 1, so F1 = 2p / (1 + p); the other class scores 0."""
    p = counts[majority] / sum(counts.values())
    return p, (2 * p / (1 + p)) / 2


def test_a_classification_trial_stuck_at_the_majority_class_is_flagged(compose_cfg, sms_args, tmp_path, caplog):
    # a learning rate this high on 13% spam drives the tiny model to answer "ham" for every message
    with caplog.at_level("INFO", logger="tasks.train.record"):
        result = run_trial(compose_cfg(*sms_args, "optim.lr=1e-2"), run_dir=tmp_path / "run")
    (done,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial done:")]
    assert f"LEARNED NOTHING: {AT_MAJORITY}" in done, "the trial's closing line says so"
    m, splits = result["metrics"], result["data"]["splits"]
    train_counts = splits["train"]["class_counts"]
    assert m["majority_class"] == max(train_counts, key=train_counts.get) == "ham"
    for split in ("val", "test"):
        acc, f1 = _majority_by_hand(splits[split]["class_counts"], "ham")
        assert m[f"majority_{split}_accuracy"] == pytest.approx(acc)
        assert m[f"majority_{split}_macro_f1"] == pytest.approx(f1)
    assert m["val_accuracy"] == pytest.approx(m["majority_val_accuracy"]), "the trial collapsed, as intended"
    assert m["learned"] is False and AT_MAJORITY in m["flags"]
    rows = splits["train"]["rows"]
    assert result["steps_per_epoch"] == -(-rows // 16), "a top-level scalar: the study alone gives epochs trained"


def test_a_trial_that_does_not_move_is_no_better_than_the_untouched_model(compose_cfg, sms_args, tmp_path):
    result = run_trial(compose_cfg(*sms_args, "optim=sgd", "optim.lr=1e-12"), run_dir=tmp_path / "run")
    m, first = result["metrics"], result["val_curve"][0]
    assert first["step"] == 0, "the untouched model is always evaluated first"
    assert {k: m[f"baseline_{k}"] for k in ("val_loss", "val_accuracy", "val_macro_f1")} == {
        k: first[k] for k in ("val_loss", "val_accuracy", "val_macro_f1")
    }
    assert m["learned"] is False and NOT_BETTER_THAN_UNTOUCHED in m["flags"]


def test_flag_margins_are_one_row_or_half_a_point():
    base = {"majority_val_accuracy": 0.8, "baseline_val_accuracy": 0.5}
    # 100 rows: one row is 1 point, more than the 0.5-point floor
    assert AT_MAJORITY in learning_flags({**base, "val_accuracy": 0.81}, "val_accuracy", "maximize", 100)
    assert learning_flags({**base, "val_accuracy": 0.82}, "val_accuracy", "maximize", 100) == []
    # 1,000 rows: the 0.5-point floor
    assert AT_MAJORITY in learning_flags({**base, "val_accuracy": 0.805}, "val_accuracy", "maximize", 1000)
    assert learning_flags({**base, "val_accuracy": 0.806}, "val_accuracy", "maximize", 1000) == []
    # loss: a drop of under 0.5% is no learning
    loss = {"baseline_val_loss": 2.0}
    assert learning_flags({**loss, "val_loss": 1.995}, "val_loss", "minimize", 100) == [NOT_BETTER_THAN_UNTOUCHED]
    assert learning_flags({**loss, "val_loss": 1.98}, "val_loss", "minimize", 100) == []


def test_majority_class_comes_from_the_train_split_only():
    train = np.array([1, 1, 1, 0])
    row = majority_baseline(train, {"val": np.array([0, 0, 0, 1])}, ("neg", "pos"))
    assert row["majority_class"] == "pos"
    assert row["majority_val_accuracy"] == 0.25 and row["majority_val_macro_f1"] == pytest.approx((0.4 + 0) / 2)


def test_inspect_shows_the_majority_class_of_every_split(shared_data, capsys):
    sample = shared_data / "sms_spam" / "SMSSpamCollection"
    assert inspect_main(["task=sms_spam", f"task.path={sample}", "model=tiny"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("majority class"))
    # 3379 of 3902 train rows are ham; the test split holds 966 ham of 1115 (tests/test_inspect.py)
    assert line.startswith("majority class 'ham' (the train split's)")
    assert "train accuracy 0.866" in line and f"test accuracy {966 / 1115:.3f}" in line
    assert re.search(r"val accuracy 0\.\d{3}, macro-F1 0\.\d{3}", line)
