"""The report's figures across studies as PNG files: headless (Agg), labelled axes with units, a legend each.

Every plot colours trials by fine-tuning mode (`analysis.palette`); per-study plots live in `analysis.study_plots`,
the answer's picture in `analysis.answer_plot`.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a report is written headless, also where a display exists

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis import palette
from analysis.schema import FINETUNE_MODES, Knob, objective_label
from analysis.tables import TASK_KEYS, complete, pareto_front, sort_key

DISCRETE_LEVELS = 8  # at most this many distinct values: a knob with levels, drawn with a mean line
COST_LABELS = {
    "trainable_params": "trainable parameters (count, log scale)",
    "peak_memory_mb": "peak memory (MB)",
}


def slug(text: str) -> str:
    """A file-name-safe version of a study or task name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "study"


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def panels(n: int, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list[Axes]]:
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
    fig, axes = panels(len(groups))
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
            ax.scatter(
                x, rows["value"], alpha=0.5, label=f"{palette.mode_name(mode)} (trials)", **palette.mode_style(mode)
            )
            if x.nunique() <= DISCRETE_LEVELS:  # a mean per value; sampled continuous values have none
                means = rows.assign(_x=x).groupby("_x")["value"].mean().sort_index()
                color = palette.mode_style(mode)["color"]
                ax.plot(means.index, means.to_numpy(), color=color, label=f"{palette.mode_name(mode)} (mean)")
        # full trials have no rank: the best of them is the line LoRA has to reach
        full = finished[
            (finished["finetune"] == "full") & (finished["task"] == task) & (finished["objective"] == objective)
        ]
        if knob.attr == "lora_rank" and not full.empty:
            best = full["value"].max() if direction == "maximize" else full["value"].min()
            ax.axhline(best, color=palette.MODE_COLORS["full"], linestyle="--", label="full fine-tuning (best)")
        if knob.log:
            ax.set_xscale("log")
        ax.set_xlabel(knob.label)
        ax.set_ylabel(objective_label(objective))
        ax.set_title(f"{task}: {objective} ({direction})")
        ax.legend(fontsize="small")
    return save(fig, path)


def cost_front_plot(df: pd.DataFrame, cost: str, path: Path) -> Path | None:
    """Objective against a cost (trainable params or peak memory), Pareto-optimal trials joined, per task."""
    flagged = pareto_front(df, cost)
    groups = _task_groups(flagged)
    if not groups:
        return None
    fig, axes = panels(len(groups))
    for ax, ((task, objective, direction), group) in zip(axes, groups, strict=True):
        for mode in sorted(group["finetune"].dropna().unique()):
            rows = group[group["finetune"] == mode]
            ax.scatter(rows[cost], rows["value"], alpha=0.6, label=palette.mode_name(mode), **palette.mode_style(mode))
        front = group[group["pareto"]].sort_values(cost)
        ax.step(front[cost], front["value"], where="post", color="black", linewidth=1, label="Pareto front")
        if cost == "trainable_params" and group[cost].gt(0).all():  # LoRA and full differ by decades
            ax.set_xscale("log")
        ax.set_xlabel(COST_LABELS.get(cost, cost))
        ax.set_ylabel(objective_label(objective))
        ax.set_title(f"{task}: {objective} ({direction})")
        ax.legend(fontsize="small")
    return save(fig, path)


def judge_plot(judged: pd.DataFrame, path: Path) -> Path | None:
    """Judge mean ± std against validation perplexity per configuration: does perplexity rank like the judge?"""
    rows = judged.dropna(subset=["judge_mean"])
    if rows.empty:
        return None
    fig, axes = panels(1, width=6.0)
    ax = axes[0]
    x = rows["val_perplexity"] if rows["val_perplexity"].notna().any() else pd.Series(range(len(rows)))
    for mode in sorted(rows["finetune"].dropna().unique()):
        mask = (rows["finetune"] == mode).to_numpy()
        ax.errorbar(
            x[mask], rows["judge_mean"][mask], yerr=rows["judge_std"][mask].fillna(0), linestyle="none",
            capsize=3, label=palette.mode_name(mode), **palette.mode_style(mode),
        )  # fmt: skip
    ax.set_xlabel("validation perplexity" if rows["val_perplexity"].notna().any() else "configuration (index)")
    ax.set_ylabel("LLM judge score, mean ± std (0-100)")
    ax.set_title("alpaca: judge score vs perplexity")
    ax.legend(fontsize="small")
    return save(fig, path)
