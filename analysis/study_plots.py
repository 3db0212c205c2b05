"""Per-study figures: optimisation history, validation curves, importances, a study's Pareto front, a train curve.

Drawn here rather than by Optuna's plots so that they colour by fine-tuning mode like every other figure and keep
their legend inside the axes (Optuna's history legend sits outside and squeezes the plot to a third of its width).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import optuna
import pandas as pd
from matplotlib.lines import Line2D

from analysis import palette
from analysis.load import intermediate_long
from analysis.plots import panels, save
from analysis.schema import objective_label
from analysis.tables import complete, is_duplicate


def history_plot(df: pd.DataFrame, study: str, path: Path) -> Path | None:
    """Objective per trial number, a colour per mode, and the best value so far (complete search trials)."""
    done = complete(df[df["study"] == study]).sort_values("number")
    if done.empty:
        return None
    direction, objective = done["direction"].iloc[0], done["objective"].iloc[0]
    fig, axes = panels(1, width=8.0, height=3.8)
    ax = axes[0]
    for mode, rows in done.groupby("finetune", sort=True):
        ax.scatter(rows["number"], rows["value"], label=palette.mode_name(mode), alpha=0.8, **palette.mode_style(mode))
    best = done["value"].cummax() if direction == "maximize" else done["value"].cummin()
    ax.step(done["number"], best, where="post", color="black", linewidth=1, label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel(objective_label(objective))
    ax.set_title(f"{study}: optimisation history ({len(done)} complete trials)")
    ax.legend(fontsize="small", loc="best")
    return save(fig, path)


def intermediate_plot(df: pd.DataFrame, study: str, path: Path) -> Path | None:
    """Validation curves of one study's trials: colour = fine-tuning mode, line style = state (where pruning cut).

    A trial that reused a twin's result carries the twin's curve: it is drawn once, as the twin's.
    """
    rows = df[(df["study"] == study) & ~is_duplicate(df)]
    curves = intermediate_long(rows)
    if curves.empty:
        return None
    mode_of = dict(zip(rows["number"], rows["finetune"], strict=True))
    fig, axes = panels(1, width=8.0, height=3.8)
    ax = axes[0]
    for (number, state), curve in curves.groupby(["number", "state"], sort=True):
        mode = mode_of.get(number)
        ax.plot(
            curve["step"], curve["value"], marker=".", alpha=0.7, color=palette.mode_style(mode)["color"],
            linestyle=palette.STATE_LINESTYLES.get(state, "-"),
        )  # fmt: skip
    modes = [m for m in ("full", "lora") if m in set(mode_of.values())]
    states = [s for s in palette.STATE_LINESTYLES if s in set(curves["state"])]
    handles = [Line2D([], [], color=palette.mode_style(m)["color"], label=palette.mode_name(m)) for m in modes]
    handles += [Line2D([], [], color="black", linestyle=palette.STATE_LINESTYLES[s], label=s.lower()) for s in states]
    ax.set_xlabel("training step")
    ax.set_ylabel(objective_label(rows["objective"].iloc[0]))
    ax.set_title(f"{study}: validation curves ({curves['number'].nunique()} trials)")
    ax.legend(handles=handles, fontsize="small", loc="best")
    return save(fig, path)


def importance_plot(table: pd.DataFrame, study: str, path: Path) -> Path | None:
    """Horizontal bars of `tables.param_importances`: bars over the LoRA trials in LoRA's colour."""
    if table.empty:
        return None
    rows = table.iloc[::-1]
    over_lora = rows["over"].str.contains("LoRA trials")
    colors = [palette.MODE_COLORS["lora"] if lora else palette.OTHER_COLOR for lora in over_lora]
    fig, axes = panels(1, width=7.0, height=0.5 * len(rows) + 1.6)
    ax = axes[0]
    labels = [
        f"{p}  (over {over.removeprefix('all ').removeprefix('the ')})"
        for p, over in zip(rows["param"], rows["over"], strict=True)
    ]
    ax.barh(labels, rows["importance"], color=colors)
    ax.set_xlabel("importance (PED-ANOVA, each group sums to 1)")
    ax.set_xlim(0, 1)
    ax.set_title(f"{study}: parameter importances")
    return save(fig, path)


def pareto_plot(df: pd.DataFrame, study: optuna.Study, path: Path) -> Path | None:
    """A multi-objective study's own front on its first two objectives, a colour per mode, the front joined."""
    rows = complete(df[df["study"] == study.study_name]).dropna(subset=["value", "value_1"])
    if rows.empty:
        return None
    names = (study.metric_names or ["objective 0", "objective 1"])[:2]
    best = {t.number for t in study.best_trials}
    fig, axes = panels(1, width=7.0, height=4.2)
    ax = axes[0]
    for mode, group in rows.groupby("finetune", sort=True):
        ax.scatter(
            group["value_1"], group["value"], label=palette.mode_name(mode), alpha=0.8, **palette.mode_style(mode)
        )
    front = rows[rows["number"].isin(best)].sort_values("value_1")
    ax.plot(front["value_1"], front["value"], color="black", linewidth=1, marker="o", mfc="none", ms=11,
            label="the study's best trials (front)")  # fmt: skip
    if (rows["value_1"] > 0).all() and rows["value_1"].max() / rows["value_1"].min() > 100:
        ax.set_xscale("log")
    ax.set_xlabel(objective_label(names[1]) + f" ({study.directions[1].name.lower()})")
    ax.set_ylabel(objective_label(names[0]) + f" ({study.directions[0].name.lower()})")
    extra = f"; objective {', '.join(study.metric_names[2:])} not shown" if len(study.directions) > 2 else ""
    ax.set_title(f"{study.study_name}: Pareto front{extra}")
    ax.legend(fontsize="small", loc="best")
    return save(fig, path)


def train_curve_plot(curve: Sequence[Mapping[str, float]], title: str, path: Path) -> Path | None:
    """One trial's training loss per step (metrics.json's `train_curve`), for its page in the dashboard."""
    points = [(p["step"], p["loss"]) for p in curve if isinstance(p, Mapping) and "step" in p and "loss" in p]
    if not points:
        return None
    fig, axes = panels(1, width=6.0, height=3.4)
    ax = axes[0]
    ax.plot([s for s, _ in points], [v for _, v in points], linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats per token)")
    ax.set_title(title)
    return save(fig, path)
