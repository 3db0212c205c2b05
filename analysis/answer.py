"""The answer in words and one table: a verdict line per task and model size, and what LoRA saves.

Shared by the report's first screen and the study note in optuna-dashboard, so both say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis import wording
from analysis.schema import is_fraction_objective
from analysis.verdicts import Arm, Verdict

SINGLE_RUNS = "Single runs, not confirmed with seeds."


@dataclass(frozen=True)
class VerdictLine:
    """One line of the answer: "sms_spam · tiny", the outcome word, the verdict, then costs and caveats."""

    title: str
    outcome: str  # matches / better / worse / undecided
    text: str  # who wins by how much
    details: str  # what it costs, how sure, and any arm that learned nothing


def _value(v: Verdict, arm: Arm) -> str:
    interval = arm.interval
    if interval is None:
        return wording.number(arm.mean)
    return f"{wording.number(arm.mean)} ± {wording.number(interval.half_width, 2)}"


def _amount(v: Verdict, x: float, signed: bool = False) -> str:
    """A difference in the objective's units: points for 0-1 objectives (0.012 -> "1.2 points")."""
    sign = ("+" if x > 0 else "−" if x < 0 else "") if signed else ""
    if is_fraction_objective(v.objective):
        return f"{sign}{abs(100 * x):.1f} points"
    return f"{sign}{wording.number(abs(x))}"


def difference_text(v: Verdict) -> str:
    """ "8.1 points lower", with the 95% interval when confirmed ("−0.5 points, 95% CI −1.0 to +0.1")."""
    d = v.difference
    notes = []
    if not is_fraction_objective(v.objective) and v.full.mean:
        notes.append(f"{abs(100 * d / v.full.mean):.1f}%")
    if v.direction == "minimize":
        notes.append("lower is better")
    if v.interval is None:
        if not d:
            return "no difference"
        return f"{_amount(v, d)} {'lower' if d < 0 else 'higher'}" + (f" ({', '.join(notes)})" if notes else "")
    low, high = _amount(v, v.interval.low, signed=True), _amount(v, v.interval.high, signed=True)
    tail = " (lower is better)" if v.direction == "minimize" else ""
    return f"difference {_amount(v, d, signed=True)}, 95% CI {low} to {high}{tail}"


def _costs(v: Verdict) -> str:
    lora, full = v.lora, v.full
    parts = [wording.ratio(lora.cost("trainable_params"), full.cost("trainable_params"), "trainable parameters")]
    for name, key in (("peak memory", "peak_memory_mb"), ("train time", "train_time_s")):
        parts.append(wording.change(name, lora.costs.get(key, ()), full.costs.get(key, ())))
    return wording.join([p for p in parts if p])


def baseline_caution(v: Verdict) -> str:
    """A warning when an arm does not beat the baseline (it learned nothing); "" otherwise."""
    stuck = [arm for arm in (v.lora, v.full) if v.at_baseline(arm)]
    if not stuck or v.baseline is None:
        return ""
    level = f"Caution: {v.baseline.name} scores {wording.number(v.baseline.value)};"
    values = [f"{arm.label} ({wording.number(arm.mean)})" for arm in stuck]
    if len(stuck) == 2:
        return (
            f"{level} neither {values[0]} nor {values[1]} beats that: these runs learned nothing, so this verdict "
            "says nothing about LoRA."
        )
    return f"{level} {values[0]} does not beat that: it learned nothing."


def verdict_line(v: Verdict) -> VerdictLine:
    """The verdict in sentences: who wins by how much, at what cost, how sure, and any trial that learned nothing."""
    lora, full = v.lora, v.full
    head = {
        "matches": f"{lora.label} matches {full.label}",
        "better": f"{lora.label} beats {full.label}",
        "worse": f"{lora.label} falls short of {full.label}",
        "undecided": f"Undecided whether {lora.label} matches {full.label}: run more seeds",
    }[v.outcome]
    values = f"{v.objective} {_value(v, lora)} vs {_value(v, full)}"
    text = f"{head}: {values}, {difference_text(v)}; margin {v.margin_text}."
    costs = _costs(v)
    details = [f"LoRA needs {costs}." if costs else ""]
    details.append(SINGLE_RUNS if not v.confirmed else f"Seeds: LoRA {lora.n}, full {full.n}; 95% intervals.")
    details.append(baseline_caution(v))
    return VerdictLine(f"{v.task} · {v.model}", v.outcome, text, " ".join(d for d in details if d))


def _pair(lora: float, full: float, fmt) -> str:
    return f"{fmt(lora)} / {fmt(full)}"


def _trials(lora: str, full: str) -> str:
    """ "sms-tiny #6 / #1" (one study), else both ids in full."""
    (study_a, number_a), (study_b, number_b) = lora.rsplit("#", 1), full.rsplit("#", 1)
    return f"{study_a} #{number_a} / #{number_b}" if study_a == study_b else f"{lora} / {full}"


def saves_table(verdicts: list[Verdict]) -> pd.DataFrame:
    """What LoRA saves, one row per verdict, every cell "LoRA / full" (means over seeds when confirmed)."""
    rows = []
    for v in verdicts:
        lora, full = v.lora, v.full
        rows.append(
            {
                "task": v.task,
                "model": v.model,
                "objective": f"{v.objective} {_pair(lora.mean, full.mean, wording.number)}",
                "trainable %": _pair(lora.cost("trainable_pct"), full.cost("trainable_pct"), wording.percent),
                "peak memory (MB)": _pair(lora.cost("peak_memory_mb"), full.cost("peak_memory_mb"), wording.number),
                "tokens/s": _pair(lora.cost("tokens_per_s"), full.cost("tokens_per_s"), wording.number),
                "train time (s)": _pair(lora.cost("train_time_s"), full.cost("train_time_s"), wording.number),
                "trials": _trials(lora.trial, full.trial),
            }
        )
    return pd.DataFrame(rows)


def unpaired_line(task: str, model: str, mode: str) -> str:
    other = "full fine-tuning" if mode == "lora" else "LoRA"
    only = "LoRA" if mode == "lora" else "full fine-tuning"
    return f"{task} · {model}: only {only} finished here, so there is no {other} trial to compare it with."


def short_answer(v: Verdict) -> str:
    """The verdict in one line for the dashboard's study page: outcome, values, how sure."""
    line = verdict_line(v)
    sure = "single runs, not confirmed with seeds" if not v.confirmed else f"{v.lora.n} and {v.full.n} seeds"
    warning = "; caution: a run no better than the baseline" if baseline_caution(v) else ""
    return f"{v.outcome}: {line.text} ({sure}{warning}; the Note tab has the details)"


def note_markdown(scope: str, verdicts: list[Verdict], unpaired: list[str], report: str) -> str:
    """The study note for optuna-dashboard: the same verdicts and table as the report's first screen."""
    from analysis.document import Document

    doc = Document("LoRA vs full fine-tuning: the answer")
    doc.paragraph(scope)
    lines = [verdict_line(v) for v in verdicts]
    doc.verdicts([(line.title, line.outcome, line.text, line.details) for line in lines])
    doc.bullets(unpaired)
    if verdicts:
        doc.heading("What LoRA saves (each cell: LoRA / full fine-tuning)", level=3)
        doc.table(saves_table(verdicts))
    doc.paragraph(
        f"Full report: {report}; it is also attached to this study as report.html, with its figures (Study "
        "Artifacts, on the study's first page). Written by `python -m analysis.report`; running it again replaces "
        "this part of the note and keeps the rest."
    )
    return doc.to_markdown().replace("# LoRA vs full", "## LoRA vs full", 1)
