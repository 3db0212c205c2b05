"""The answer in one picture per task: objective against trainable parameters (log axis), a panel per model size.

LoRA configurations (rank, and variant or targets where the study varies them) are points with their best trial,
interval bars when confirmation runs exist; the other LoRA trials are faint dots. Full fine-tuning is a band: its
95% interval when confirmed, else its value ± the "matches" margin, so a LoRA point inside the band matches it.
The references are lines: always the majority class dotted, the untouched model (before training) dash-dotted.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes

from analysis import palette, wording
from analysis.plots import save
from analysis.schema import MODEL_ORDER, is_fraction_objective, objective_label
from analysis.tables import TASK_KEYS, complete
from analysis.verdicts import CONFIRMS_ATTR, Margin, Verdict, confirmation_runs, lora_keys, lora_label


def _oriented_best(rows: pd.DataFrame, direction: str) -> pd.Series:
    sign = 1.0 if direction == "maximize" else -1.0
    return rows.loc[(sign * rows["value"]).idxmax()]


def _confirmed_values(runs: pd.DataFrame, row: pd.Series) -> list[float]:
    own = runs[(runs["study"] == row["study"]) & (runs[CONFIRMS_ATTR].astype(float) == float(row["number"]))]
    return [float(v) for v in own["value"]]


def _lora_points(ax: Axes, lora: pd.DataFrame, runs: pd.DataFrame, direction: str) -> None:
    """The best trial of each LoRA configuration, labelled; interval bars where it was confirmed."""
    from analysis.stats import mean_interval

    keys = lora_keys(lora)
    variants = [k for k in keys if k != "lora_rank"]
    marker_of = {}
    if variants:
        combos = lora[variants].astype(str).agg("/".join, axis=1)
        marker_of = {
            c: palette.VARIANT_MARKERS[i % len(palette.VARIANT_MARKERS)] for i, c in enumerate(combos.unique())
        }
    color = palette.MODE_COLORS["lora"]
    grouped = lora.groupby(keys, dropna=False, sort=True) if keys else [((), lora)]
    for _, rows in grouped:
        best = _oriented_best(rows, direction)
        values = _confirmed_values(runs, best)
        interval = mean_interval(values) if len(values) >= 2 else None
        y = interval.estimate if interval else best["value"]
        marker = marker_of.get("/".join(str(best[k]) for k in variants), "o") if variants else "o"
        label = lora_label(best, keys)
        if interval is not None:
            yerr = [[y - interval.low], [interval.high - y]]
            ax.errorbar(best["trainable_params"], y, yerr=yerr, color=color, marker=marker, capsize=4, ms=8, ls="none")
        else:
            ax.scatter(best["trainable_params"], y, color=color, marker=marker, s=70, zorder=3, edgecolor="black")
        ax.annotate(
            label.removeprefix("LoRA "), (best["trainable_params"], y), textcoords="offset points", xytext=(6, 6),
            fontsize="small", color=color,
        )  # fmt: skip


def _full_band(ax: Axes, verdict: Verdict | None, full: pd.DataFrame, margin: Margin, direction: str) -> None:
    color = palette.MODE_COLORS["full"]
    if verdict is not None:
        arm, x = verdict.full, verdict.full.cost("trainable_params")
        center, interval = arm.mean, arm.interval
    elif not full.empty:
        best = _oriented_best(full, direction)
        center, interval, x = float(best["value"]), None, best["trainable_params"]
    else:
        return
    if interval is not None:
        low, high, what = interval.low, interval.high, f"full fine-tuning, 95% CI ({verdict.full.n} seeds)"
    else:
        objective = verdict.objective if verdict else str(full["objective"].iloc[0])
        width = margin.width(objective, center)
        what = f"full fine-tuning {margin.describe(objective).split(' of ')[0]} (LoRA inside: matches)"
        low, high = center - width, center + width
    ax.axhspan(low, high, color=color, alpha=0.15, label=what)
    ax.axhline(center, color=color, linewidth=1.2)
    ax.scatter(
        [x], [center], color=color, marker=palette.MODE_MARKERS["full"], s=80, zorder=3, edgecolor="black",
        label="best of each configuration",
    )  # fmt: skip
    ax.annotate("full", (x, center), textcoords="offset points", xytext=(6, 6), fontsize="small", color=color)


def _panel(ax: Axes, group: pd.DataFrame, runs: pd.DataFrame, verdict: Verdict | None, margin: Margin) -> None:
    task, objective, direction = (group[k].iloc[0] for k in TASK_KEYS)
    for mode in ("full", "lora"):
        rows = group[group["finetune"] == mode]
        ax.scatter(
            rows["trainable_params"], rows["value"], alpha=0.3, s=18, label=f"{palette.mode_name(mode)} (every trial)",
            **palette.mode_style(mode),
        )  # fmt: skip
    _full_band(ax, verdict, group[group["finetune"] == "full"], margin, direction)
    lora = group[group["finetune"] == "lora"]
    if not lora.empty:
        _lora_points(ax, lora, runs, direction)
    if verdict is not None:
        _references(ax, verdict)
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.1)  # room for the labels beside the points at the edges
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(objective_label(objective))
    ax.set_title(
        f"{task} · {group['model'].iloc[0]}: {objective} ({'higher' if direction == 'maximize' else 'lower'} is better)"
    )
    ax.legend(fontsize="small", loc="best")


def _references(ax: Axes, verdict: Verdict) -> None:
    """The majority class (dotted) and the untouched model (dash-dotted) as lines; one far off the trials' range (a
    random model's perplexity before training) is named in the legend instead of squashing the points."""
    low, high = ax.get_ylim()
    reach = 3 * (high - low)
    bounded = is_fraction_objective(verdict.objective)  # a 0-1 scale: every reference fits
    for reference, style in ((verdict.baseline, ":"), (verdict.untouched, "-.")):
        if reference is None:
            continue
        if bounded or low - reach <= reference.value <= high + reach:
            ax.axhline(reference.value, color=palette.BASELINE_COLOR, linestyle=style, label=reference.name)
        else:
            label = f"{reference.name}: {wording.number(reference.value)}, off the chart"
            ax.plot([], [], color=palette.BASELINE_COLOR, linestyle=style, label=label)


def answer_plot(
    df: pd.DataFrame, task_key: tuple[str, str, str], verdicts: list[Verdict], margin: Margin, path: Path
) -> Path | None:
    """The picture for one (task, objective, direction): a panel per model size; None without plottable trials."""
    done = complete(df).dropna(subset=["trainable_params", "finetune", "model"])
    done = done[(done[TASK_KEYS] == pd.Series(task_key, index=TASK_KEYS)).all(axis=1)]
    if done.empty:
        return None
    models = sorted(done["model"].unique(), key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else math.inf, m))
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4.4), squeeze=False)
    runs = confirmation_runs(df)
    for ax, model in zip(axes[0], models, strict=True):
        verdict = next(
            (v for v in verdicts if (v.task, v.objective, v.model) == (task_key[0], task_key[1], model)), None
        )
        _panel(ax, done[done["model"] == model], runs, verdict, margin)
    return save(fig, path)
