"""The report on synthetic studies made through Optuna's own API (ask/tell on a real SQLite storage).

Three studies of different tasks share one storage: sst2 (accuracy, with pruned and failed trials), alpaca
(perplexity, judge scores, two model sizes) and a multi-objective ag_news study (accuracy vs trainable params).
Every table is checked against a direct pandas computation on `study.trials_dataframe()`.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from analysis import answer, palette, tables, wording
from analysis.load import ReportInputError, load_studies, open_storage, trials_frame
from analysis.report import main
from analysis.schema import KNOBS, NOT_RUN_ATTR
from analysis.verdicts import verdicts_from_frame

ROOT = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SMALL_TOTAL = {"small": 124_441_346, "medium": 354_825_218}
BLOCK = {"small": 7_087_872, "medium": 12_596_224}
EMBED = {"small": 39_383_808, "medium": 52_539_392}
PER_RANK = {"small": 147_456, "medium": 393_216}


def _costs(model: str, finetune: str, rank: int, frozen: int) -> dict[str, float]:
    total = SMALL_TOTAL[model]
    if finetune == "lora":
        trainable = rank * PER_RANK[model] + 1_538
    else:
        trainable = total - (EMBED[model] + frozen * BLOCK[model] if frozen else 0)
    memory = (3_300.0 if finetune == "full" else 2_150.0 + 4 * rank) * (1 if model == "small" else 2.6)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "peak_memory_mb": memory - 40 * frozen,
        "wall_time_s": (380.0 if finetune == "full" else 240.0) * (1 if model == "small" else 2.8),
        "tokens_per_s": 135.0 if finetune == "full" else 221.0,
    }


def _record(study, params: dict, dists: dict, attrs: dict, *, state=TrialState.COMPLETE, values=None, curve=()):
    """One trial as the sweeper records it: enqueue the overrides, ask, attributes, curve, tell."""
    study.enqueue_trial(params)
    trial = study.ask(dists)
    for name, value in attrs.items():
        trial.set_user_attr(name, value)
    for step, value in curve:
        trial.report(value, step)
    study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)


def build_sst2(storage: str, rng: np.random.Generator) -> None:
    study = optuna.create_study(study_name="sst2-small", storage=storage, direction="maximize")
    study.set_metric_names(["accuracy"])
    dists = {
        "finetune": CategoricalDistribution(["full", "lora"]),
        "lora.rank": CategoricalDistribution([4, 8, 16]),
        "freeze.blocks": CategoricalDistribution([0, 4]),
        "optim.lr": FloatDistribution(1e-5, 1e-3, log=True),
    }
    for i in range(22):
        finetune, rank, frozen = ["full", "lora"][i % 2], [4, 8, 16][i % 3], [0, 4][(i // 2) % 2]
        lr = float(10 ** rng.uniform(-5, -3))
        params = {"finetune": finetune, "lora.rank": rank, "freeze.blocks": frozen, "optim.lr": lr}
        base = 0.92 if finetune == "full" else 0.82 + 0.03 * math.log2(rank / 4)
        acc = float(base - 0.02 * abs(math.log10(lr) + 4) + rng.normal(0, 0.005))
        curve = [(10, acc - 0.2), (20, acc - 0.05), (30, acc)]
        attrs = {
            "task": "sst2", "model": "small", "finetune": finetune, "lora_rank": rank, "lora_alpha": 2 * rank,
            "freeze_blocks": frozen, "optimizer": "adamw", "lr": lr, "schedule": "cosine", "warmup_ratio": 0.1,
            "batch_size": 8, "grad_accum": 1, "epochs": 1, "val_accuracy": acc, "val_macro_f1": acc - 0.01,
            "val_loss": 1 - acc, "test_accuracy": acc - 0.005, "objective_name": "accuracy", "device": "cpu",
            "run_dir": f"sweeps/sst2-small/trial_{i}", **_costs("small", finetune, rank, frozen),
        }  # fmt: skip
        if i in (3, 11, 17):  # stopped by the pruner after two evaluations
            _record(study, params, dists, {}, state=TrialState.PRUNED, curve=[(10, 0.5), (20, 0.55)])
        elif i == 7:
            reason = "NonFiniteLossError: loss is nan at step 12 (lr=1e+06)"
            _record(study, params, dists, {"fail_reason": reason}, state=TrialState.FAIL)
        elif i in (9, 19):
            reason = "OutOfMemoryError: CUDA out of memory (batch_size=64)"
            _record(study, params, dists, {"fail_reason": reason, "task": "sst2"}, state=TrialState.FAIL)
        else:
            _record(study, params, dists, attrs, values=acc, curve=curve)


def build_alpaca(storage: str, rng: np.random.Generator) -> None:
    study = optuna.create_study(study_name="alpaca-judge", storage=storage, direction="minimize")
    study.set_metric_names(["perplexity"])
    dists = {
        "finetune": CategoricalDistribution(["full", "lora"]),
        "model": CategoricalDistribution(["small", "medium"]),
        "lora.rank": CategoricalDistribution([8, 16]),
        "trainer.batch_size": CategoricalDistribution([4, 8]),
        "schedule.warmup_ratio": FloatDistribution(0.0, 0.2),
    }
    for i in range(10):
        finetune, model, rank, batch = (
            ["full", "lora"][i % 2],
            ["small", "medium"][(i // 2) % 2],
            [8, 16][i % 3 % 2],
            [4, 8][i % 2],
        )
        warmup = float(rng.uniform(0, 0.2))
        ppl = float((11.5 if finetune == "full" else 12.4) - (1.5 if model == "medium" else 0) + rng.normal(0, 0.2))
        judge = float(60 - 2 * (ppl - 10) + rng.normal(0, 3))
        params = {"finetune": finetune, "model": model, "lora.rank": rank, "trainer.batch_size": batch}
        params["schedule.warmup_ratio"] = warmup
        attrs = {
            "task": "alpaca", "model": model, "finetune": finetune, "lora_rank": rank, "freeze_blocks": 0,
            "lr": 3e-4, "batch_size": batch, "warmup_ratio": warmup, "epochs": 1, "val_loss": math.log(ppl),
            "val_perplexity": ppl, "judge_mean": judge, "judge_std": float(rng.uniform(1, 6)),
            "judge_n_scored": 98 - i % 3, "judge_n_failed": 2 + i % 3, "rouge_l": float(0.3 + rng.normal(0, 0.02)),
            "objective_name": "perplexity", **_costs(model, finetune, rank, 0),
        }  # fmt: skip
        _record(study, params, dists, attrs, values=ppl, curve=[(50, ppl + 3), (100, ppl)])  # fmt: skip


def build_ag_news_multi(storage: str, rng: np.random.Generator) -> None:
    study = optuna.create_study(study_name="ag_news-mo", storage=storage, directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "trainable_params"])
    dists = {
        "finetune": CategoricalDistribution(["full", "lora"]),
        "lora.rank": CategoricalDistribution([2, 4, 8]),
        "trainer.epochs": CategoricalDistribution([1, 2]),
    }
    for i in range(8):
        finetune, rank, epochs = ["full", "lora"][int(i % 4 == 0) ^ 1], [2, 4, 8][i % 3], [1, 2][i % 2]
        acc = float((0.90 if finetune == "full" else 0.84 + 0.01 * rank) + 0.01 * epochs + rng.normal(0, 0.004))
        costs = _costs("small", finetune, rank, 0)
        attrs = {
            "task": "ag_news", "model": "small", "finetune": finetune, "lora_rank": rank, "freeze_blocks": 0,
            "lr": 1e-4, "batch_size": 8, "epochs": epochs, "val_accuracy": acc,
            "objective_name": ["accuracy", "trainable_params"], **costs,
        }  # fmt: skip
        params = {"finetune": finetune, "lora.rank": rank, "trainer.epochs": epochs}
        _record(study, params, dists, attrs, values=[acc, costs["trainable_params"]])


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('studies') / 'sweeps.db'}"
    rng = np.random.default_rng(0)
    build_sst2(url, rng)
    build_alpaca(url, rng)
    build_ag_news_multi(url, rng)
    return url


@pytest.fixture(scope="module")
def frame(storage: str) -> pd.DataFrame:
    return trials_frame(load_studies(open_storage(storage)))


@pytest.fixture(scope="module")
def direct(storage: str) -> pd.DataFrame:
    """Optuna's own DataFrame of every study: the reference the tables are checked against."""
    frames = []
    for name in optuna.get_all_study_names(storage):
        df = optuna.load_study(study_name=name, storage=storage).trials_dataframe(multi_index=False)
        # named after the study's metric names: value_accuracy, or values_accuracy + values_<second>
        df["value"] = df[next(c for c in df if c.startswith("value"))]
        frames.append(df.assign(study=name))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def report(storage: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report") / "all"
    written = main(["--storage", storage, "--out", str(out), "--quiet"])
    return {**written, "out": out, "md": (out / "report.md").read_text(), "html": (out / "report.html").read_text()}


# the frame


def test_frame_has_one_row_per_trial_with_state_params_attributes_and_intermediates(frame, direct):
    assert len(frame) == len(direct) == 22 + 10 + 8
    assert frame.groupby("study")["state"].value_counts().to_dict() == (
        direct.groupby("study")["state"].value_counts().to_dict()
    )
    for column in ("params_lora.rank", "params_optim.lr", "val_accuracy", "judge_mean", "duration_s", "value_1"):
        assert column in frame
    pruned = frame[frame["state"] == "PRUNED"]
    assert set(pruned["last_step"]) == {20} and (pruned["value"] == 0.55).all()
    assert frame.loc[frame["study"] == "ag_news-mo", "objective"].eq("accuracy").all()
    assert frame.loc[frame["study"] == "alpaca-judge", "direction"].eq("minimize").all()
    # a full fine-tuning trial carries no rank, whatever the sweeper recorded
    assert frame.loc[frame["finetune"] == "full", "lora_rank"].isna().all()
    # failed trials without attributes still know their task (from their study) and mode (from params)
    failed = frame[frame["state"] == "FAIL"]
    assert failed["task"].eq("sst2").all() and failed["finetune"].notna().all()


# the tables against pandas


def test_comparison_is_the_best_trial_per_mode_as_pandas_finds_it(frame, direct):
    table = tables.compare_modes(frame).set_index(["task", "model", "finetune"])
    done = direct[direct["state"] == "COMPLETE"]
    for (task, model, finetune), row in table.iterrows():
        rows = done[
            (done["user_attrs_task"] == task)
            & (done["user_attrs_model"] == model)
            & (done["user_attrs_finetune"] == finetune)
        ]
        best = rows.loc[rows["value"].idxmin() if task == "alpaca" else rows["value"].idxmax()]
        assert row["value"] == pytest.approx(best["value"])
        assert row["trainable_params"] == best["user_attrs_trainable_params"]
        assert row["peak_memory_mb"] == pytest.approx(best["user_attrs_peak_memory_mb"])
    assert set(table.index) == {
        ("sst2", "small", "full"), ("sst2", "small", "lora"), ("alpaca", "small", "full"),
        ("alpaca", "small", "lora"), ("alpaca", "medium", "full"), ("alpaca", "medium", "lora"),
        ("ag_news", "small", "full"), ("ag_news", "small", "lora"),
    }  # fmt: skip


def test_verdicts_compare_the_best_trial_of_each_mode_and_word_its_costs(frame):
    verdicts = {(v.task, v.model): v for v in verdicts_from_frame(frame)}
    assert set(verdicts) == {("sst2", "small"), ("alpaca", "small"), ("alpaca", "medium"), ("ag_news", "small")}
    table = tables.compare_modes(frame)
    sst2 = table[table["task"] == "sst2"].set_index("finetune")
    full, lora = sst2.loc["full"], sst2.loc["lora"]
    verdict = verdicts[("sst2", "small")]
    assert verdict.lora.values == (lora["value"],) and verdict.full.values == (full["value"],)
    assert verdict.lora.label == f"LoRA r={lora['lora_rank']:.0f}"
    frozen = int(full["freeze_blocks"])
    assert verdict.full.label == "full fine-tuning" + (
        f" with the embeddings and blocks 0-{frozen - 1} frozen" if frozen else ""
    )
    gain = lora["value"] - full["value"]
    assert verdict.outcome == ("matches" if abs(gain) <= 0.01 else "better" if gain > 0 else "worse")
    line = answer.verdict_line(verdict)
    points = f"{abs(100 * gain):.1f} points {'lower' if gain < 0 else 'higher'}; margin ±1 point."
    assert f"accuracy {lora['value']:.3f} vs {full['value']:.3f}, {points}" in line.text
    params = wording.ratio(lora["trainable_params"], full["trainable_params"], "trainable parameters")
    memory = f"{100 - 100 * lora['peak_memory_mb'] / full['peak_memory_mb']:.0f}% less peak memory"
    assert line.details.startswith(f"LoRA needs {params} and {memory}. Throughput: ")
    assert "e+" not in line.details and answer.SINGLE_RUNS in line.details
    alpaca = answer.verdict_line(verdicts[("alpaca", "medium")])
    assert ", lower is better); margin ±2% of full fine-tuning's value." in alpaca.text


def test_knob_effects_match_a_groupby_over_the_raw_trials(frame, direct):
    rank = next(k for k in KNOBS if k.attr == "lora_rank")
    table = tables.knob_effects(frame, rank)
    sst2 = table[(table["task"] == "sst2") & (table["finetune"] == "lora")].set_index("lora_rank")
    done = direct[(direct["state"] == "COMPLETE") & (direct["study"] == "sst2-small")]
    lora = done[done["user_attrs_finetune"] == "lora"].groupby("user_attrs_lora_rank")["value"]
    assert sst2["mean"].to_dict() == pytest.approx(lora.mean().to_dict())
    assert sst2["best"].to_dict() == pytest.approx(lora.max().to_dict())
    assert sst2["n"].to_dict() == lora.count().to_dict()
    assert not table["finetune"].eq("full").any()  # rank is N/A for full fine-tuning
    # alpaca minimizes: best is the smallest perplexity
    model = next(k for k in KNOBS if k.attr == "model")
    alpaca = tables.knob_effects(frame, model).query("task == 'alpaca' and finetune == 'full'").set_index("model")
    done = direct[(direct["state"] == "COMPLETE") & (direct["study"] == "alpaca-judge")]
    expected = done[done["user_attrs_finetune"] == "full"].groupby("user_attrs_model")["value"].min()
    assert alpaca["best"].to_dict() == pytest.approx(expected.to_dict())
    assert list(alpaca.index) == ["small", "medium"]  # by size, not alphabetically


def test_continuous_lr_is_binned_on_a_log_scale(frame):
    lr = next(k for k in KNOBS if k.attr == "lr")
    table = tables.knob_effects(frame, lr)
    sst2 = table[table["task"] == "sst2"]
    assert sst2["lr"].str.fullmatch(r"[0-9.e+-]+ to [0-9.e+-]+").all()
    for _, rows in sst2.groupby("finetune"):
        lower = rows["lr"].str.split(" to ").str[0].astype(float)
        assert lower.is_monotonic_increasing  # bins in order of lr, not of their text
    assert sst2.groupby("finetune")["n"].sum().sum() == len(tables.complete(frame.query("task == 'sst2'")))


def test_swept_knobs_are_the_swept_or_varied_ones(frame):
    names = {k.attr for k in tables.swept_knobs(frame)}
    assert {"lora_rank", "freeze_blocks", "lr", "model", "batch_size", "warmup_ratio", "epochs"} <= names
    assert "optimizer" not in names  # always adamw


def test_state_counts_and_failure_reasons(frame, direct):
    counts = tables.state_counts(frame).set_index("study")
    expected = pd.crosstab(direct["study"], direct["state"])
    for study in expected.index:
        for state in expected.columns:
            assert counts.loc[study, state] == expected.loc[study, state]
    assert counts.loc["sst2-small", "total"] == 22
    reasons = tables.failure_reasons(frame).set_index("fail_reason")
    oom = "OutOfMemoryError: CUDA out of memory (batch_size=64)"
    assert reasons.loc[oom, "n"] == 2 and reasons.loc[oom, "trials"] == "9, 19"


def test_pareto_front_flags_exactly_the_non_dominated_trials(frame):
    front = tables.pareto_front(frame, "trainable_params")
    for _, group in front.groupby("task"):
        sign = 1 if group["direction"].iloc[0] == "maximize" else -1
        for _, row in group.iterrows():
            dominated = (
                (sign * group["value"] >= sign * row["value"])
                & (group["trainable_params"] <= row["trainable_params"])
                & (
                    (sign * group["value"] > sign * row["value"])
                    | (group["trainable_params"] < row["trainable_params"])
                )
            ).any()
            assert row["pareto"] == (not dominated)
    assert front.groupby("task")["pareto"].any().all()


def test_judge_table_lists_alpaca_scores_best_first(frame, direct):
    judged = tables.judge_table(frame)
    done = direct[direct["user_attrs_task"] == "alpaca"]
    assert len(judged) == len(done)
    assert judged["judge_mean"].tolist() == sorted(done["user_attrs_judge_mean"], reverse=True)
    assert judged["judge_n_failed"].sum() == done["user_attrs_judge_n_failed"].sum()


def test_importances_judge_lora_knobs_over_lora_trials_only(storage, frame):
    studies = {s.study_name: s for s in load_studies(open_storage(storage))}
    table = tables.param_importances(studies["sst2-small"])
    assert set(table["param"]) <= {"finetune", "lora.rank", "freeze.blocks", "optim.lr"}
    everyone, lora = table[table["over"].str.startswith("all ")], table[table["over"].str.contains("LoRA")]
    done = tables.complete(frame.query("study == 'sst2-small'"))
    assert set(everyone["over"]) == {f"all {len(done)} complete trials"} and "lora.rank" not in set(everyone["param"])
    assert set(lora["over"]) == {f"the {(done['finetune'] == 'lora').sum()} LoRA trials"}
    assert "lora.rank" in set(lora["param"]) and "finetune" not in set(lora["param"])
    assert everyone["importance"].sum() == pytest.approx(1.0) and lora["importance"].sum() == pytest.approx(1.0)
    lonely = optuna.create_study()
    lonely.add_trial(optuna.create_trial(params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)}, value=1))
    with pytest.raises(ValueError, match="at least 2 complete trials, but got 1"):
        tables.param_importances(lonely)


# the report


def test_report_has_every_section_and_its_numbers(report, frame):
    md = report["md"]
    for heading in (
        "### What LoRA saves",
        "## The answer in one picture per task",
        "## Best trial per fine-tuning mode",
        "## Effects of each knob",
        "### LoRA rank r (adapter width)",
        "### peak learning rate (log scale)",
        "## Validation curves",
        "## Optimisation history",
        "## Parameter importances",
        "## Pareto fronts: objective vs cost",
        "### ag_news-mo: the study's own Pareto front",
        "## Trial states and failures",
        "## Instruction tuning (alpaca): LLM judge",
    ):
        assert heading in md
    sst2 = next(v for v in verdicts_from_frame(frame) if v.task == "sst2")
    line = answer.verdict_line(sst2)
    assert f"- **sst2 · small: {sst2.outcome}.** {line.text} {line.details}" in md
    assert "NonFiniteLossError: loss is nan at step 12" in md
    best_full = tables.complete(frame.query("task == 'sst2' and finetune == 'full'"))["value"].max()
    assert f"{best_full:.4g}" in md
    for name in ("knob_lora_rank", "knob_lr", "history_sst2-small", "intermediate_sst2-small", "pareto_ag_news-mo"):
        assert f"figures/{name}.png" in md
    assert "importance_sst2-small" in md and "pareto_trainable_params" in md and "pareto_peak_memory_mb" in md
    assert "figures/judge.png" in md


def test_every_figure_exists_decodes_and_is_embedded_in_the_html(report):
    referenced = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", report["md"])
    assert len(referenced) >= 12 and len(referenced) == len(report["figures"])
    for relative in referenced:
        image = matplotlib.image.imread(report["out"] / relative)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert report["html"].count('src="data:image/png;base64,') == len(referenced)
    assert "figures/" not in report["html"]  # self-contained
    assert "<table" in report["html"] and "sst2-small" in report["html"]


def _table(md: str, section: str) -> pd.DataFrame:
    """The first Markdown table under a heading, as text cells."""
    lines = [line for line in md.split(section, 1)[1].split("\n## ", 1)[0].splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def test_knobs_that_do_not_apply_are_blank_and_unknown_values_a_dash(report):
    best = _table(report["md"], "## Best trial per fine-tuning mode")
    full, lora = best[best["finetune"] == "full"], best[best["finetune"] == "lora"]
    assert (full["lora_rank"] == "").all() and lora["lora_rank"].str.fullmatch(r"\d+").all()
    assert not full["config"].str.contains("lora.").any() and lora["config"].str.contains("lora.rank=").all()
    # the synthetic studies' run folders do not exist: epochs trained is unknown, and the report says what to record
    assert (best["epochs_trained"] == "—").all() and "steps_per_epoch" in report["md"]


def _has_colour(image: np.ndarray, hex_colour: str, tolerance: float = 0.03) -> bool:
    """True where some pixel is `hex_colour` drawn on white with an opacity of 0.5 or more (lines use alpha)."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    pixels = image[..., :3].reshape(-1, 3)
    channel = int(np.argmax(1 - rgb))
    opacity = (1 - pixels[:, channel]) / (1 - rgb[channel])
    blended = 1 - opacity[:, None] * (1 - rgb)
    return bool(((np.abs(pixels - blended).max(axis=1) < tolerance) & (opacity >= 0.5)).any())


def test_curves_and_history_are_coloured_by_mode_not_by_state(report):
    for name in ("intermediate_sst2-small", "history_sst2-small", "answer_sst2_accuracy"):
        image = matplotlib.image.imread(report["out"] / "figures" / f"{name}.png")
        assert _has_colour(image, palette.MODE_COLORS["full"]) and _has_colour(image, palette.MODE_COLORS["lora"])
        assert not _has_colour(image, "#d62728")  # tab:red, once the colour of pruned trials


def test_states_table_has_no_empty_column(report, frame):
    assert tables.state_counts(frame).columns.name is None
    html = report["html"].split("Trial states and failures", 1)[1]
    head = html.split("<thead>", 1)[1].split("</thead>", 1)[0]
    assert head.count("<tr") == 1 and "<th></th>" not in head


def test_trials_are_exported_as_csv_and_parquet(report, frame):
    csv = pd.read_csv(report["out"] / "trials.csv")
    parquet = pd.read_parquet(report["out"] / "trials.parquet")
    assert len(csv) == len(parquet) == len(frame)
    assert parquet["val_accuracy"].dropna().tolist() == pytest.approx(frame["val_accuracy"].dropna().tolist())
    assert set(parquet["state"]) == {"COMPLETE", "PRUNED", "FAIL"}
    assert parquet["intermediate_values"].str.startswith("{").all()


def test_named_study_and_default_output_folder(storage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["--storage", storage, "--study", "alpaca-judge", "--quiet"])
    out = tmp_path / "reports" / "alpaca-judge"
    md = (out / "report.md").read_text()
    assert "**alpaca · medium: " in md and "sst2" not in md
    summary = capsys.readouterr().out
    assert "report.html" in summary and str(Path("reports") / "alpaca-judge") in summary


# edge cases


def test_single_trial_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'one.db'}"
    study = optuna.create_study(study_name="one", storage=url, direction="maximize")
    attrs = {"task": "sms_spam", "model": "tiny", "finetune": "lora", "lora_rank": 4, "val_accuracy": 0.9}
    rank = {"lora.rank": CategoricalDistribution([4])}
    _record(study, {"lora.rank": 4}, rank, {**attrs, **_costs("small", "lora", 4, 0)}, values=0.9)
    written = main(["--storage", url, "--out", str(tmp_path / "r"), "--quiet"])
    md = written["markdown"].read_text()
    assert "- sms_spam · tiny: only LoRA finished here, so there is no full fine-tuning trial to compare it with." in md
    assert "one: not computed, importances need at least 2 complete trials, but got 1." in md
    for path in written["figures"]:
        assert matplotlib.image.imread(path).ndim == 3


def test_only_failed_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'failed.db'}"
    study = optuna.create_study(study_name="broken", storage=url)
    for i in range(3):
        reason = {"fail_reason": f"boom {i % 2}"}
        _record(study, {"lora.rank": 4}, {"lora.rank": CategoricalDistribution([4])}, reason, state=TrialState.FAIL)
    written = main(["--storage", url, "--out", str(tmp_path / "r"), "--quiet"])
    md = written["markdown"].read_text()
    assert "From 3 trials in 1 study (broken): 3 failed." in md and "No trial finished with a value" in md
    assert "| broken | boom 0 | 2 | 0, 2 |" in md
    assert written["figures"] == []


def test_wrong_sqlite_path_lists_the_databases_there_and_creates_nothing(tmp_path, storage):
    (tmp_path / "sweeps.db").write_bytes(Path(storage.removeprefix("sqlite:///")).read_bytes())
    missing = tmp_path / "sweep.db"
    with pytest.raises(SystemExit, match=r"must exist, but got --storage=sqlite:///.*sweep\.db .*sweeps\.db"):
        main(["--storage", f"sqlite:///{missing}", "--quiet"])
    assert not missing.exists()


def test_wrong_study_name_lists_the_studies(storage):
    with pytest.raises(SystemExit, match=r"--study must be one of \['sst2-small', 'alpaca-judge', 'ag_news-mo'\]"):
        main(["--storage", storage, "--study", "sst2", "--quiet"])


def test_unreachable_database_error_hides_the_password():
    with pytest.raises(ReportInputError) as error:
        open_storage("postgresql+psycopg://bob:s3cret@127.0.0.1:1/sweeps")
    assert "s3cret" not in str(error.value) and "bob:***@127.0.0.1" in str(error.value)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--storage", f"sqlite:///{tmp_path / 'nope.db'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "error: the SQLite file of --storage must exist" in result.stderr


def test_trials_the_sweeper_closed_unrun_are_left_out(tmp_path):
    """A trial that lost the race for the last budget place is FAIL bookkeeping, not a failure of a config."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=url, direction="maximize")
    rank = {"lora.rank": CategoricalDistribution([4])}
    attrs = {"task": "sms_spam", "model": "tiny", "finetune": "lora", "lora_rank": 4, "val_accuracy": 0.9}
    _record(study, {"lora.rank": 4}, rank, attrs, values=0.9)
    loser = study.ask()
    study._storage.set_trial_system_attr(loser._trial_id, NOT_RUN_ATTR, True)
    loser.set_user_attr("fail_reason", "not run: the study's n_trials budget was already taken")
    study.tell(loser, state=TrialState.FAIL)
    frame = trials_frame([optuna.load_study(study_name="race", storage=url)])
    assert list(frame["state"]) == ["COMPLETE"]


def test_a_reused_result_counts_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'dup.db'}"
    study = optuna.create_study(study_name="dup", storage=url, direction="maximize")
    rank = {"lora.rank": CategoricalDistribution([2, 4])}
    attrs = {"task": "sms_spam", "model": "tiny", "finetune": "full", "val_accuracy": 0.9}
    _record(study, {"lora.rank": 2}, rank, attrs, values=0.9)
    _record(study, {"lora.rank": 4}, rank, {**attrs, "duplicate_of": 0}, values=0.9)
    frame = trials_frame([optuna.load_study(study_name="dup", storage=url)])
    assert len(frame) == 2 and list(tables.complete(frame)["number"]) == [0]
    counts = tables.state_counts(frame).set_index("study")
    assert counts.loc["dup", "COMPLETE"] == 1 and counts.loc["dup", "reused"] == 1
    md = main(["--storage", url, "--out", str(tmp_path / "r"), "--quiet", "--no-dashboard"])["markdown"].read_text()
    assert "From 2 trials in 1 study (dup): 1 complete, 1 reused a finished twin's result (counted once)." in md
    assert "| dup#1 | 0 |" in md
