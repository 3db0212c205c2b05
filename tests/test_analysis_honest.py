"""What the report reads since issue [12]: validation selects, the test figure is the chosen trial's, costs inside
their measured spread are "within noise", memory that is not the trial's own is left out, the untouched model is a
reference beside the majority class, epochs and baselines come from the study alone, a trial that learned nothing is
marked, and the judge section reads val_judge_mean (search) and test_judge_mean (confirmation runs)."""

from __future__ import annotations

from dataclasses import replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from test_analysis import _record

from analysis import answer, answer_plot, tables
from analysis.load import load_studies, open_storage, trials_frame
from analysis.report import main
from analysis.verdicts import UNTOUCHED, Baseline, Margin, confirmation_runs, verdicts_from_frame

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
DISTS = {"finetune": CategoricalDistribution(["full", "lora"]), "lora.rank": CategoricalDistribution([2, 8])}


def sms_trial(study, finetune, value, **extra):
    """A classification trial as the trainer records it now: no run folder on this machine, the study alone."""
    attrs = {
        "task": "sms_spam", "model": "tiny", "finetune": finetune, "lora_rank": 8 if finetune == "lora" else None,
        "freeze_blocks": 0, "batch_size": 8, "grad_accum": 1, "steps": 30, "steps_per_epoch": 60,
        "val_accuracy": value, "test_accuracy": value - 0.01, "majority_class": "ham", "majority_val_accuracy": 0.86,
        "baseline_val_accuracy": 0.40, "learned": True, "flags": "",
        "trainable_params": 4_000 if finetune == "lora" else 400_000, "total_params": 400_000,
        "peak_memory_mb": 500.0 if finetune == "lora" else 800.0, "peak_memory_own": True,
        "tokens_per_s": 1000.0, "tokens_per_s_p10": 900.0, "tokens_per_s_p90": 1100.0, "train_time_s": 3.0,
        "run_dir": "/nowhere/on/this/machine",
        **extra,
    }  # fmt: skip
    attrs["trainable_pct"] = 100 * attrs["trainable_params"] / attrs["total_params"]
    _record(study, {"finetune": finetune, "lora.rank": 8}, DISTS, attrs, values=value)


def frame_of(url):
    return trials_frame(load_studies(open_storage(url)))


@pytest.fixture
def study_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    study = optuna.create_study(study_name="h", storage=url, direction="maximize")
    study.set_metric_names(["accuracy"])
    return study, url


def test_epochs_and_both_references_come_from_the_study_alone(study_url):
    study, url = study_url
    sms_trial(study, "full", 0.95)
    sms_trial(study, "lora", 0.93)
    frame = frame_of(url)
    assert not frame["run_readable"].any(), "no run folder is read"
    assert frame["epochs_trained"].tolist() == [0.5, 0.5]
    assert frame["baseline_value"].tolist() == [0.86, 0.86] and frame["baseline_class"].tolist() == ["ham", "ham"]
    (verdict,) = verdicts_from_frame(frame)
    assert verdict.baseline.value == 0.86 and verdict.untouched.name == UNTOUCHED and verdict.untouched.value == 0.40


def test_a_table_shows_the_test_figure_of_the_trial_chosen_on_validation_and_marks_one_that_learned_nothing(
    study_url,
):
    study, url = study_url
    sms_trial(study, "full", 0.95, test_accuracy=0.90)
    sms_trial(study, "full", 0.94, test_accuracy=0.99)  # the best test figure, of a trial not chosen
    sms_trial(study, "lora", 0.86, learned=False, flags="at majority class")
    compared = tables.compare_modes(frame_of(url)).set_index("finetune")
    assert compared.loc["full", "test"] == 0.90 and compared.loc["full", "learned"] == "yes"
    assert compared.loc["lora", "learned"] == "no: at majority class"
    (verdict,) = verdicts_from_frame(frame_of(url))
    assert verdict.full.test == 0.90
    assert "Test split, same runs: 0.850 vs 0.900." in answer.verdict_line(verdict).details


def test_single_run_throughput_inside_both_spreads_is_within_noise_and_outside_is_stated(study_url, tmp_path):
    study, url = study_url
    sms_trial(study, "full", 0.95, tokens_per_s=1000.0, tokens_per_s_p10=700.0, tokens_per_s_p90=1300.0)
    sms_trial(study, "lora", 0.95, tokens_per_s=1250.0, tokens_per_s_p10=1200.0, tokens_per_s_p90=1400.0)
    (verdict,) = verdicts_from_frame(frame_of(url))
    line = answer.verdict_line(verdict)
    assert "Throughput: tokens/s within noise (p10-p90 ranges overlap)." in line.details
    assert answer.saves_table([verdict])["tokens/s"].iloc[0] == "1,250 / 1,000 (within noise)"
    apart = f"sqlite:///{tmp_path / 'apart.db'}"
    study = optuna.create_study(study_name="apart", storage=apart, direction="maximize")
    study.set_metric_names(["accuracy"])
    sms_trial(study, "full", 0.95, tokens_per_s=1000.0, tokens_per_s_p10=950.0, tokens_per_s_p90=1050.0)
    sms_trial(study, "lora", 0.95, tokens_per_s=1250.0, tokens_per_s_p10=1200.0, tokens_per_s_p90=1300.0)
    (verdict,) = verdicts_from_frame(frame_of(apart))
    assert "Throughput: 25% more tokens/s (steady-state median)." in answer.verdict_line(verdict).details


def test_confirmed_throughput_whose_seed_interval_contains_no_change_is_within_noise(study_url):
    study, url = study_url
    sms_trial(study, "full", 0.95)
    sms_trial(study, "lora", 0.95)
    for number, finetune, speeds in [(0, "full", (900.0, 1100.0, 1000.0)), (1, "lora", (1050.0, 950.0, 1020.0))]:
        for seed, speed in enumerate(speeds):
            confirm = {"phase": "confirm", "confirms": number, "seed": 1000 + seed, "tokens_per_s": speed}
            sms_trial(study, finetune, 0.95 + 0.001 * seed, **confirm)
    frame = frame_of(url)
    (verdict,) = verdicts_from_frame(frame)
    assert verdict.confirmed
    counts = tables.state_counts(frame).iloc[0]
    assert (counts["COMPLETE"], counts["confirmation"], counts["total"]) == (2, 6, 8), "runs apart from the search"
    assert "Throughput: tokens/s within noise (the seeds' 95% interval contains no change)." in (
        answer.verdict_line(verdict).details
    )


def test_peak_memory_that_is_not_the_trials_own_is_left_out_and_said(study_url, tmp_path):
    study, url = study_url
    sms_trial(study, "full", 0.95, peak_memory_own=False, peak_memory_mb=100.0)  # a process's peak: no saving
    sms_trial(study, "lora", 0.95)
    frame = frame_of(url)
    (verdict,) = verdicts_from_frame(frame)
    details = answer.verdict_line(verdict).details
    assert "peak memory" not in details.split(".")[0], "no memory change is stated"
    assert "Peak memory leaves out h#0: measured as the process's peak" in details
    assert answer.saves_table([verdict])["peak memory (MB)"].iloc[0] == "500 / —"
    front = tables.pareto_front(frame, "peak_memory_mb")
    assert front["number"].tolist() == [1]


def test_a_run_below_the_untouched_model_is_flagged_and_the_picture_draws_both_references(study_url):
    study, url = study_url
    sms_trial(study, "full", 0.95, baseline_val_accuracy=0.97)  # training made it worse than before
    sms_trial(study, "lora", 0.96, baseline_val_accuracy=0.97)
    frame = frame_of(url)
    (verdict,) = verdicts_from_frame(frame)
    line = answer.verdict_line(verdict)
    assert f"Caution: {UNTOUCHED} scores 0.970; neither LoRA r=8 (0.960) nor full fine-tuning (0.950)" in line.details
    fig, ax = plt.subplots()
    done = tables.complete(frame)
    answer_plot._panel(ax, done, confirmation_runs(frame), verdict, Margin())
    labels = ax.get_legend_handles_labels()[1]
    plt.close(fig)
    assert UNTOUCHED in labels and 'always answering "ham" (the majority class)' in labels
    far = replace(verdict, objective="val_perplexity", untouched=Baseline(UNTOUCHED, 50_000.0))
    fig, ax = plt.subplots()
    answer_plot._panel(ax, done, confirmation_runs(frame), far, Margin())
    labels = ax.get_legend_handles_labels()[1]
    high = ax.get_ylim()[1]
    plt.close(fig)
    assert f"{UNTOUCHED}: 50,000, off the chart" in labels and high < 2, "a random model's perplexity: named, not drawn"


def test_the_judge_section_reads_validation_figures_and_the_confirmation_runs_test_figures(tmp_path):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    study = optuna.create_study(study_name="alpaca-tiny", storage=url, direction="maximize")
    study.set_metric_names(["judge"])
    base = {"task": "alpaca", "model": "tiny", "lora_rank": None, "trainable_params": 1.0, "total_params": 2.0}
    judged = {"val_judge_std": 5.0, "val_judge_n_scored": 6, "val_judge_n_failed": 0, "val_rouge_l": 0.2}
    for finetune, value in (("full", 60.0), ("lora", 55.0)):
        _record(study, {"finetune": finetune}, {"finetune": DISTS["finetune"]},
                {**base, "finetune": finetune, "val_judge_mean": value, **judged}, values=value)  # fmt: skip
    for seed, (val, test) in enumerate([(58.0, 50.0), (62.0, 54.0), (60.0, 52.0)]):
        attrs = {**base, "finetune": "full", "val_judge_mean": val, "test_judge_mean": test, **judged}
        attrs.update(phase="confirm", confirms=0, seed=1000 + seed)
        _record(study, {"finetune": "full"}, {"finetune": DISTS["finetune"]}, attrs, values=val)
    frame = frame_of(url)
    table = tables.judge_table(frame)
    assert table["judge_mean"].tolist() == [60.0, 55.0], "search trials only, by their validation figure"
    confirmed = tables.confirmed_judge_table(frame, confirmation_runs(frame)).iloc[0]
    assert (confirmed["confirms"], confirmed["test judge"], confirmed["val judge"]) == (0, 52.0, 60.0)
    assert confirmed["test n"] == 3 and confirmed["test ±"] == pytest.approx(4.302653 * 2 / 3**0.5, rel=1e-5)
    md = main(["--storage", url, "--out", str(tmp_path / "r"), "--quiet", "--no-dashboard"])["markdown"].read_text()
    assert "### Confirmed configurations: the test prompts" in md and "The test prompts are judged only" in md


def test_an_old_study_with_unprefixed_judge_figures_still_reads(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.create_study(study_name="old", storage=url, direction="maximize")
    study.set_metric_names(["judge"])
    for finetune, value in (("full", 60.0), ("lora", 55.0)):
        attrs = {"task": "alpaca", "model": "tiny", "finetune": finetune, "judge_mean": value, "judge_std": 3.0}
        _record(study, {"finetune": finetune}, {"finetune": DISTS["finetune"]}, attrs, values=value)
    table = tables.judge_table(frame_of(url))
    assert table["judge_mean"].tolist() == [60.0, 55.0] and table["judge_std"].tolist() == [3.0, 3.0]
    md = main(["--storage", url, "--out", str(tmp_path / "r"), "--quiet", "--no-dashboard"])["markdown"].read_text()
    assert "predates the split: its trials were judged on the test prompts during the search" in md
    assert isinstance(pd.read_csv(tmp_path / "r" / "trials.csv"), pd.DataFrame)
