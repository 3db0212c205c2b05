"""Verdicts: the decision rule, single runs today, confirmation runs (phase="confirm") tomorrow, and their words."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from test_analysis import _record

from analysis import answer, runs, stats, tables, wording
from analysis.load import load_studies, open_storage, trials_frame
from analysis.report import main
from analysis.verdicts import Arm, Baseline, Margin, compare, decide, verdicts_from_frame

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
MARGIN = 0.01


# the decision rule


@pytest.mark.parametrize(
    ("gain", "interval", "outcome"),
    [
        (-0.005, None, "matches"),  # single runs: |d| <= margin
        (0.01, None, "matches"),
        (-0.02, None, "worse"),
        (0.03, None, "better"),
        (-0.004, (-0.008, -0.001), "matches"),  # the whole interval inside the margin, even if below zero
        (-0.02, (-0.03, -0.005), "worse"),  # below zero and reaching past the margin
        (0.02, (0.005, 0.03), "better"),
        (-0.006, (-0.015, 0.003), "undecided"),  # crosses zero and the margin: more seeds
        (0.0, (-0.02, 0.02), "undecided"),
    ],
)
def test_decide(gain, interval, outcome):
    assert decide(gain, interval, MARGIN) == outcome


def test_margin_is_points_for_fractions_and_relative_otherwise():
    margin = Margin()
    assert margin.width("accuracy", 0.9) == 0.01 and margin.describe("accuracy") == "±1 point"
    assert margin.width("perplexity", 12.0) == pytest.approx(0.24)
    assert margin.describe("perplexity") == "±2% of full fine-tuning's value"
    assert Margin(points=0.02).describe("macro_f1") == "±2 points"


def test_a_lower_is_better_objective_is_oriented():
    lora = Arm("LoRA r=8", "s#1", (12.4, 12.5, 12.3))
    full = Arm("full fine-tuning", "s#0", (11.5, 11.6, 11.4))
    verdict = compare("alpaca", "small", "perplexity", "minimize", lora, full)
    assert verdict.outcome == "worse" and verdict.confirmed
    assert verdict.difference == pytest.approx(0.9)
    reference = stats.welch_interval(lora.values, full.values)
    assert (verdict.interval.low, verdict.interval.high) == (reference.low, reference.high)
    text = answer.difference_text(verdict)
    assert text.startswith("difference +0.900, 95% CI +") and "points" not in text


# words


def test_ratios_read_as_a_person_writes_them():
    assert wording.ratio(3_382_208, 105_000, "trainable parameters") == "32x the trainable parameters"
    assert wording.ratio(16_512, 50_240, "trainable parameters") == "33% of the trainable parameters"
    assert wording.ratio(295_000, 124_000_000, "trainable parameters") == "0.24% of the trainable parameters"
    assert wording.ratio(101, 100, "peak memory") == "about the same peak memory"
    assert wording.count(16_512) == "16.5k" and wording.count(124_441_346) == "124M"
    assert "e+" not in wording.ratio(1e9, 1.0, "x") and "e-" not in wording.percent(1e-5)


def test_a_cost_change_inside_the_measured_spread_is_within_noise():
    assert wording.change("peak memory", [550, 600, 580], [560, 610, 590]) == "peak memory within noise"
    assert wording.change("train time", [50, 50.5, 49.5], [100, 101, 99]) == "50% less train time"
    assert wording.change("train time", [100.0], [102.0]) == "about the same train time"  # single runs
    assert wording.change("tokens/s", [1646.0], [883.0]) == "86% more tokens/s"
    assert wording.change("x", [], [1.0]) is None


def test_frozen_blocks_are_named():
    assert wording.frozen(0) is None
    assert wording.frozen(1) == "embeddings and block 0 frozen"
    assert wording.frozen(4, 12) == "embeddings and blocks 0-3 frozen"
    assert wording.frozen(12, 12) == "embeddings and all 12 blocks frozen"


# what only the run folder knows


DATA = {
    "splits": {
        "train": {"rows": 1000, "class_counts": {"ham": 860, "spam": 140}},
        "val": {"rows": 200, "class_counts": {"ham": 170, "spam": 30}},
    }
}


def test_majority_baseline_and_epochs_trained_from_metrics_json():
    assert runs.majority_baseline(DATA, "accuracy") == 170 / 200
    assert runs.majority_baseline(DATA, "val_macro_f1") == pytest.approx((2 * 0.85 / 1.85) / 2)
    assert runs.majority_baseline(DATA, "perplexity") is None
    row = {"steps": 60, "batch_size": 8, "grad_accum": 2, "objective": "accuracy", "model": "tiny"}
    columns = runs.run_columns(__import__("pandas").Series(row), {"data": DATA})
    assert columns["steps_per_epoch"] == math.ceil(math.ceil(1000 / 8) / 2) == 63
    assert columns["epochs_trained"] == pytest.approx(60 / 63)
    assert columns["baseline_value"] == 0.85 and columns["baseline_class"] == "ham"
    unknown = runs.run_columns(__import__("pandas").Series(row), None)
    assert math.isnan(unknown["epochs_trained"]) and not unknown["run_readable"]


# confirmation runs through a real storage


def _trial(study, finetune, rank, value, run_dir, extra=None):
    attrs = {
        "task": "sms_spam", "model": "tiny", "finetune": finetune, "lora_rank": rank if finetune == "lora" else None,
        "freeze_blocks": 0, "lr": 3e-4, "batch_size": 8, "grad_accum": 1, "epochs": 1, "steps": 60,
        "val_accuracy": value, "trainable_params": 4_224 * rank if finetune == "lora" else 3_382_208,
        "total_params": 3_400_000, "peak_memory_mb": 550.0 if finetune == "lora" else 600.0,
        "train_time_s": 3.0 if finetune == "lora" else 5.0, "tokens_per_s": 1600.0, "run_dir": str(run_dir),
        **(extra or {}),
    }  # fmt: skip
    attrs["trainable_pct"] = 100 * attrs["trainable_params"] / attrs["total_params"]
    dists = {"finetune": CategoricalDistribution(["full", "lora"]), "lora.rank": CategoricalDistribution([2, 8])}
    _record(study, {"finetune": finetune, "lora.rank": rank}, dists, attrs, values=value)


@pytest.fixture
def confirmed(tmp_path):
    """Search: full 0.95, LoRA r=2 0.948 (best search value), r=8 0.946; confirmation: 3 seeds of each."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"data": DATA}))
    url = f"sqlite:///{tmp_path / 'confirm.db'}"
    study = optuna.create_study(study_name="confirm", storage=url, direction="maximize")
    study.set_metric_names(["accuracy"])
    for finetune, rank, value in [("full", 2, 0.95), ("lora", 2, 0.948), ("lora", 8, 0.946)]:
        _trial(study, finetune, rank, value, run_dir)
    seeds = {0: [0.951, 0.949, 0.952], 1: [0.930, 0.935, 0.932], 2: [0.947, 0.950, 0.946]}
    for number, values in seeds.items():
        finetune, rank = {0: ("full", 2), 1: ("lora", 2), 2: ("lora", 8)}[number]
        for seed, value in enumerate(values):
            confirm = {"phase": "confirm", "confirms": number, "seed": 100 + seed}
            _trial(study, finetune, rank, value, run_dir, confirm)
    return url, seeds


def test_confirmation_runs_fill_the_arms_and_give_an_interval(confirmed):
    url, seeds = confirmed
    frame = trials_frame(load_studies(open_storage(url)))
    (verdict,) = verdicts_from_frame(frame)
    # the LoRA configuration with the best confirmed mean (r=8), not the best single search value (r=2)
    assert verdict.lora.label == "LoRA r=8" and verdict.lora.trial == "confirm#2"
    assert verdict.lora.values == tuple(seeds[2]) and verdict.full.values == tuple(seeds[0])
    reference = stats.welch_interval(seeds[2], seeds[0])
    assert verdict.interval == reference
    sign_interval = (reference.low, reference.high)
    assert verdict.outcome == decide(reference.estimate, sign_interval, 0.01) == "matches"
    assert verdict.baseline == Baseline('always answering "ham" (the majority class)', 0.85)
    # search tables ignore the confirmation runs
    rank = tables.knob_effects(frame, next(k for k in __import__("analysis").schema.KNOBS if k.attr == "lora_rank"))
    assert rank["n"].tolist() == [1, 1]


def test_report_states_confirmed_verdicts_with_intervals(confirmed, tmp_path):
    url, seeds = confirmed
    written = main(["--storage", url, "--out", str(tmp_path / "r"), "--quiet", "--no-dashboard"])
    md = written["markdown"].read_text()
    first = md.split("\n## ", 1)[0]
    lora = stats.mean_interval(seeds[2])
    assert f"accuracy {wording.number(lora.estimate)} ± {wording.number(lora.half_width, 2)} vs" in first
    assert "95% CI" in first and "Seeds: LoRA 3, full 3; 95% intervals." in first
    assert answer.SINGLE_RUNS not in first and "**sms_spam · tiny: matches.**" in first


def test_single_runs_say_so_and_a_run_at_the_majority_class_is_flagged(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"data": DATA}))
    url = f"sqlite:///{tmp_path / 'single.db'}"
    study = optuna.create_study(study_name="single", storage=url, direction="maximize")
    study.set_metric_names(["accuracy"])
    _trial(study, "full", 2, 0.85, run_dir)  # exactly the majority class share of the validation split
    _trial(study, "lora", 8, 0.95, run_dir)
    (verdict,) = verdicts_from_frame(trials_frame(load_studies(open_storage(url))))
    assert not verdict.confirmed and verdict.outcome == "better"
    assert verdict.at_baseline(verdict.full) and not verdict.at_baseline(verdict.lora)
    line = answer.verdict_line(verdict)
    assert line.text.startswith("LoRA r=8 beats full fine-tuning: accuracy 0.950 vs 0.850, 10.0 points higher")
    assert answer.SINGLE_RUNS in line.details
    assert 'Caution: always answering "ham" (the majority class) scores 0.850; full fine-tuning (0.850)' in line.details


def test_lora_trials_are_told_apart_by_method_and_targets_not_by_the_keys_the_method_sums_up():
    """metrics.json's lora_method sums up variant, init, rslora and lr_ratio: tables, labels and plots group by it and
    by lora_targets, and a swept lora.variant is not a key of its own beside it."""
    import pandas as pd

    from analysis.schema import lora_variant_keys
    from analysis.verdicts import lora_keys, lora_label

    df = pd.DataFrame(
        {
            "finetune": ["lora", "lora", "lora", "full"],
            "lora_rank": [8, 8, 8, None],
            "lora_method": ["lora", "dora", "dora", None],
            "lora_targets": ["q,v", "q,v", "qkv,attn_proj,fc,mlp_proj", None],
            "params_lora.variant": ["lora", "dora", "dora", "lora"],
            "params_lora.targets": ["[q,v]", "[q,v]", "[qkv,attn_proj,fc,mlp_proj]", "[q,v]"],
        }
    )
    assert lora_variant_keys(df.columns) == ["lora_rank", "lora_method", "lora_targets"]
    keys = lora_keys(df)
    assert keys == ["lora_rank", "lora_method", "lora_targets"]
    assert lora_label(df.iloc[1], keys) == "LoRA r=8, method=dora, targets=q,v"
    assert tables.blank_not_applicable(df).loc[3, "lora_method"] == ""
