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
    """ "LoRA needs 3% of the trainable parameters and 41% less peak memory. Throughput: 1.9x the tokens/s (...)." """
    lora, full = v.lora, v.full
    parts = [wording.ratio(lora.cost("trainable_params"), full.cost("trainable_params"), "trainable parameters")]
    parts.append(
        wording.change("peak memory", lora.costs.get("peak_memory_mb", ()), full.costs.get("peak_memory_mb", ()))
    )
    sentences = [f"LoRA needs {wording.join([p for p in parts if p])}."] if any(parts) else []
    speed = tokens_change(v)
    if speed:
        noise = "p10-p90 ranges overlap" if not v.confirmed else "the seeds' 95% interval contains no change"
        why = noise if "within noise" in speed else "steady-state median"
        sentences.append(f"Throughput: {speed} ({why}).")
    left_out = [*lora.memory_not_own, *full.memory_not_own]
    if left_out:
        sentences.append(
            f"Peak memory leaves out {', '.join(left_out)}: measured as the process's peak, not the trial's own "
            "(peak_memory_own=false)."
        )
    return " ".join(sentences)


def tokens_change(v: Verdict) -> str | None:
    """The steady-state tokens/s of LoRA against full fine-tuning, "within noise" inside the measured spread."""
    spreads = (v.lora.spread("tokens_per_s"), v.full.spread("tokens_per_s"))
    return wording.change(
        "tokens/s", v.lora.costs.get("tokens_per_s", ()), v.full.costs.get("tokens_per_s", ()), spreads
    )


def test_sentence(v: Verdict) -> str:
    """The same runs' test figure ("Test split, same runs: 0.912 vs 0.924."): shown, never used to choose."""
    if wording.is_missing(v.lora.test) and wording.is_missing(v.full.test):
        return ""
    return f"Test split, same runs: {wording.number(v.lora.test)} vs {wording.number(v.full.test)}."


def baseline_caution(v: Verdict) -> str:
    """A warning when an arm does not beat a reference (the majority class, the untouched model): it learned
    nothing; "" otherwise."""
    stuck = [(arm, v.not_beaten(arm)) for arm in (v.lora, v.full)]
    stuck = [(arm, refs) for arm, refs in stuck if refs]
    if not stuck:
        return ""
    refs = list(dict.fromkeys(b for _, bs in stuck for b in bs))
    scores = wording.join([f"{b.name} scores {wording.number(b.value)}" for b in refs])
    level = f"Caution: {scores};"
    values = [f"{arm.label} ({wording.number(arm.mean)})" for arm, _ in stuck]
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
    details = [_costs(v), test_sentence(v)]
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
                "tokens/s": _pair(lora.cost("tokens_per_s"), full.cost("tokens_per_s"), wording.number)
                + (" (within noise)" if "within noise" in (tokens_change(v) or "") else ""),
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
