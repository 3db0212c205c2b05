"""The report's figures as PNG files: headless (Agg), labelled axes with units, a legend on every plot.

Optuna's own matplotlib plots are used where they fit (history, intermediate values, importances, a study's Pareto
front); the knob, cost-front and judge plots split trials by fine-tuning mode, which Optuna's plots cannot.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a report is written headless, also where a display exists

import matplotlib.pyplot as plt
import numpy as np
import optuna
import optuna.visualization.matplotlib as optuna_plots
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.load import intermediate_long
from analysis.schema import FINETUNE_MODES, Knob, objective_label
from analysis.tables import TASK_KEYS, complete, pareto_front, sort_key

MODE_STYLE = {"full": {"color": "tab:blue", "marker": "s"}, "lora": {"color": "tab:orange", "marker": "o"}}
STATE_COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:red", "FAIL": "tab:gray", "RUNNING": "tab:green"}
DISCRETE_LEVELS = 8  # at most this many distinct values: a knob with levels, drawn with a mean line
COST_LABELS = {
    "trainable_params": "trainable parameters (count, log scale)",
    "peak_memory_mb": "peak memory (MB)",
}


def slug(text: str) -> str:
    """A file-name-safe version of a study or task name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "study"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panels(n: int, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def _task_groups(df: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    return [(key, group) for key, group in df.groupby(TASK_KEYS, sort=True)]


def knob_plot(df: pd.DataFrame, knob: Knob, path: Path) -> Path | None:
    """Objective against one knob, a panel per task, a colour per fine-tuning mode (mean line over trials)."""
    finished = complete(df)
    groups = _task_groups(finished.dropna(subset=[knob.attr, "finetune"]))
    if not groups:
        return None
    fig, axes = _panels(len(groups))
    for ax, ((task, objective, direction), group) in zip(axes, groups, strict=True):
        levels = group[knob.attr]
        categorical = knob.categorical or pd.to_numeric(levels, errors="coerce").isna().any()
        if categorical:
            order = levels.drop_duplicates()
            order = order.iloc[np.argsort(sort_key(order).to_numpy(), kind="stable")].tolist()
            position = {v: i for i, v in enumerate(order)}
            ax.set_xticks(range(len(order)), [str(v) for v in order])
        for mode in FINETUNE_MODES:
            rows = group[group["finetune"] == mode]
            if rows.empty:
                continue
            x = rows[knob.attr].map(position) if categorical else pd.to_numeric(rows[knob.attr])
            ax.scatter(x, rows["value"], alpha=0.5, label=f"{mode} (trials)", **MODE_STYLE[mode])
            if x.nunique() <= DISCRETE_LEVELS:  # a mean per value; sampled continuous values have none
                means = rows.assign(_x=x).groupby("_x")["value"].mean().sort_index()
                ax.plot(means.index, means.to_numpy(), color=MODE_STYLE[mode]["color"], label=f"{mode} (mean)")
        # full trials have no rank: the best of them is the line LoRA has to reach
        full = finished[
            (finished["finetune"] == "full") & (finished["task"] == task) & (finished["objective"] == objective)
        ]
        if knob.attr == "lora_rank" and not full.empty:
            best = full["value"].max() if direction == "maximize" else full["value"].min()
            ax.axhline(best, color=MODE_STYLE["full"]["color"], linestyle="--", label="full (best)")
        if knob.log:
            ax.set_xscale("log")
        ax.set_xlabel(knob.label)
        ax.set_ylabel(objective_label(objective))
        ax.set_title(f"{task}: {objective} ({direction})")
        ax.legend(fontsize="small")
    return _save(fig, path)


def cost_front_plot(df: pd.DataFrame, cost: str, path: Path) -> Path | None:
    """Objective against a cost (trainable params or peak memory), Pareto-optimal trials joined, per task."""
    flagged = pareto_front(df, cost)
    groups = _task_groups(flagged)
    if not groups:
        return None
    fig, axes = _panels(len(groups))
    for ax, ((task, objective, direction), group) in zip(axes, groups, strict=True):
        for mode in sorted(group["finetune"].dropna().unique()):
            rows = group[group["finetune"] == mode]
            style = MODE_STYLE.get(mode, {"color": "tab:gray", "marker": "^"})
            ax.scatter(rows[cost], rows["value"], alpha=0.6, label=mode, **style)
        front = group[group["pareto"]].sort_values(cost)
        ax.step(front[cost], front["value"], where="post", color="black", linewidth=1, label="Pareto front")
        if cost == "trainable_params" and group[cost].gt(0).all():  # LoRA and full differ by decades
            ax.set_xscale("log")
        ax.set_xlabel(COST_LABELS.get(cost, cost))
        ax.set_ylabel(objective_label(objective))
        ax.set_title(f"{task}: {objective} ({direction})")
        ax.legend(fontsize="small")
    return _save(fig, path)


def judge_plot(judged: pd.DataFrame, path: Path) -> Path | None:
    """Judge mean ± std against validation perplexity per configuration: does perplexity rank like the judge?"""
    rows = judged.dropna(subset=["judge_mean"])
    if rows.empty:
        return None
    fig, axes = _panels(1, width=6.0)
    ax = axes[0]
    x = rows["val_perplexity"] if rows["val_perplexity"].notna().any() else pd.Series(range(len(rows)))
    for mode in sorted(rows["finetune"].dropna().unique()):
        mask = (rows["finetune"] == mode).to_numpy()
        style = MODE_STYLE.get(mode, {"color": "tab:gray", "marker": "^"})
        ax.errorbar(
            x[mask], rows["judge_mean"][mask], yerr=rows["judge_std"][mask].fillna(0), linestyle="none",
            capsize=3, label=mode, **style,
        )  # fmt: skip
    ax.set_xlabel("validation perplexity" if rows["val_perplexity"].notna().any() else "configuration (index)")
    ax.set_ylabel("LLM judge score, mean ± std (0-100)")
    ax.set_title("alpaca: judge score vs perplexity")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _optuna_plot(draw: Callable[[], Axes], path: Path) -> Path:
    """Run one of Optuna's matplotlib plots quietly and save its figure.

    Optuna switches the global style to ggplot; the style context keeps that from leaking into other figures.
    """
    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # per-objective importances are oriented by Optuna itself; its generic hint does not apply
        warnings.filterwarnings("ignore", message=".*computes the importances of params to achieve low")
        ax = draw()
        if ax.get_legend_handles_labels()[0] and ax.get_legend() is None:
            ax.legend(fontsize="small")
        return _save(ax.figure, path)


def _first(study: optuna.Study) -> dict:
    """Optuna plot arguments that pick the first objective of a multi-objective study."""
    if len(study.directions) == 1:
        return {}
    return {"target": lambda t: t.values[0], "target_name": (study.metric_names or ["objective 0"])[0]}


def history_plot(study: optuna.Study, path: Path) -> Path:
    """Objective per trial number with the best so far (Optuna's optimization history)."""
    first = _first(study)
    label = objective_label(first.get("target_name") or (study.metric_names or ["Objective Value"])[0])
    return _optuna_plot(lambda: optuna_plots.plot_optimization_history(study, **{**first, "target_name": label}), path)


def intermediate_plot(df: pd.DataFrame, study: str, path: Path) -> Path | None:
    """Validation curves of one study's trials, coloured by state: where the pruner stopped trials."""
    curves = intermediate_long(df[df["study"] == study])
    if curves.empty:
        return None
    rows = df[df["study"] == study]
    fig, axes = _panels(1, width=6.5)
    ax = axes[0]
    labelled: set[str] = set()
    for (_, state), curve in curves.groupby(["number", "state"], sort=True):
        label = "_nolegend_" if state in labelled else state.lower()
        labelled.add(state)
        ax.plot(
            curve["step"], curve["value"], marker=".", alpha=0.7, color=STATE_COLORS.get(state, "gray"), label=label
        )
    ax.set_xlabel("training step")
    ax.set_ylabel(objective_label(rows["objective"].iloc[0]))
    ax.set_title(f"{study}: intermediate values ({len(curves['number'].unique())} trials)")
    ax.legend(fontsize="small", title="trial state")
    return _save(fig, path)


def importance_plot(study: optuna.Study, path: Path) -> Path:
    """Importance of each swept param (Optuna's plot; one bar per objective in a multi-objective study)."""
    return _optuna_plot(lambda: optuna_plots.plot_param_importances(study), path)


def pareto_plot(study: optuna.Study, path: Path) -> Path:
    """A multi-objective study's own Pareto front (2 or 3 objectives)."""
    return _optuna_plot(lambda: optuna_plots.plot_pareto_front(study), path)
