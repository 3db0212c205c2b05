"""The report's detail sections, after the answer: knobs, curves, history, importances, fronts, states, judge.

Each function takes the `Sections` being built and adds its blocks and figures to its document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from analysis import plots, study_plots, tables
from analysis.load import objective_names
from analysis.schema import CONFIG_COLUMNS
from analysis.verdicts import confirmation_runs

if TYPE_CHECKING:
    from analysis.sections import Sections


def knobs(s: Sections) -> None:
    doc = s.doc
    doc.heading("Effects of each knob")
    found = tables.swept_knobs(s.df)
    if not found:
        doc.paragraph("No knob was swept or varied among complete trials.")
        return
    doc.note(
        "Mean and best objective over complete trials per knob value, split by fine-tuning mode (continuous "
        "knobs in bins; LoRA's knobs over LoRA trials only). Plots show each trial and the mean per value; the "
        "rank plot's dashed line is the best full fine-tuning trial, the level LoRA has to reach."
    )
    for knob in found:
        doc.heading(knob.label, level=3)
        doc.table(tables.blank_not_applicable(tables.knob_effects(s.df, knob).drop(columns=["direction"])))
        s.figure(lambda p, k=knob: plots.knob_plot(s.df, k, p), f"knob_{knob.attr}", knob.label)


def curves(s: Sections) -> None:
    doc = s.doc
    doc.heading("Validation curves")
    doc.note("The objective at each evaluation: colour is the fine-tuning mode, a dashed line a pruned trial.")
    for study in s.studies:
        name = plots.slug(study.study_name)
        drawn = len(doc.blocks)
        s.figure(
            lambda p, n=study.study_name: study_plots.intermediate_plot(s.df, n, p),
            f"intermediate_{name}",
            f"validation curves of {study.study_name}",
            {study.study_name},
        )
        if len(doc.blocks) == drawn:
            doc.paragraph(f"{study.study_name}: no trial reported intermediate values.")


def history(s: Sections) -> None:
    doc = s.doc
    doc.heading("Optimisation history")
    for study in s.studies:
        if tables.complete(s.df[s.df["study"] == study.study_name]).empty:
            doc.paragraph(f"{study.study_name}: no complete trial, no history.")
            continue
        name = plots.slug(study.study_name)
        s.figure(
            lambda p, n=study.study_name: study_plots.history_plot(s.df, n, p),
            f"history_{name}",
            f"optimisation history of {study.study_name}",
            {study.study_name},
        )


def importances(s: Sections) -> None:
    doc = s.doc
    doc.heading("Parameter importances")
    doc.note(
        "How much each swept setting explains of the objective (Optuna's PED-ANOVA), in two groups that each sum "
        "to 1: the settings every trial has, over all complete trials; and every setting that varies among the "
        "LoRA trials, over those only, since full fine-tuning ignores LoRA's settings (lora.*)."
    )
    for study in s.studies:
        try:
            table = tables.param_importances(study)
        except (ValueError, RuntimeError) as exc:
            doc.paragraph(f"{study.study_name}: not computed, {exc}.")
            continue
        doc.heading(study.study_name, level=3)
        doc.table(table)
        name = plots.slug(study.study_name)
        s.figure(
            lambda p, t=table, n=study.study_name: study_plots.importance_plot(t, n, p),
            f"importance_{name}",
            f"importances {study.study_name}",
            {study.study_name},
        )


def pareto(s: Sections) -> None:

    doc = s.doc
    doc.heading("Pareto fronts: objective vs cost")
    doc.note(
        "All complete trials of a task; the line joins the trials no other trial beats on both the objective "
        "and the cost."
    )
    for cost in ("trainable_params", "peak_memory_mb"):
        front = tables.pareto_front(s.df, cost)
        if front.empty:
            doc.paragraph(f"No complete trial records {cost}.")
            continue
        optimal = front[front["pareto"]]
        doc.heading(f"objective vs {cost}", level=3)
        left_out = tables.complete(s.df)
        left_out = left_out[tables.memory_not_own(left_out)] if cost == "peak_memory_mb" else left_out.iloc[0:0]
        if not left_out.empty:
            doc.note(
                f"Left out: {', '.join(tables.trial_ids(left_out))}, whose peak memory is the process's, not the "
                "trial's own (peak_memory_own=false): an upper bound that cannot be compared."
            )
        columns = ["task", "objective", *CONFIG_COLUMNS, "value", "learned", cost, "study", "number"]
        optimal = optimal.assign(learned=tables.learned_text(optimal))
        doc.table(tables.blank_not_applicable(tables.with_trial(optimal[columns])))
        s.figure(lambda p, c=cost: plots.cost_front_plot(s.df, c, p), f"pareto_{cost}", f"front vs {cost}")
    for study in s.studies:
        if len(study.directions) < 2 or len(study.directions) > 3:
            continue
        doc.heading(f"{study.study_name}: the study's own Pareto front", level=3)
        best = study.best_trials
        keep = ["finetune", "number", "value", *(c for c in s.df if c.startswith("value_")), *CONFIG_COLUMNS]
        rows = s.df[(s.df["study"] == study.study_name) & s.df["number"].isin([t.number for t in best])]
        shown = rows[[c for c in dict.fromkeys(keep) if c in rows]].dropna(axis=1, how="all")
        doc.table(tables.blank_not_applicable(shown))
        name = plots.slug(study.study_name)
        if best:
            s.figure(
                lambda p, st=study: study_plots.pareto_plot(s.df, st, p),
                f"pareto_{name}",
                f"Pareto front {study.study_name}",
                {study.study_name},
            )


def states(s: Sections) -> None:
    doc = s.doc
    doc.heading("Trial states and failures")
    doc.table(tables.state_counts(s.df))
    reused = tables.duplicates(s.df)
    if not reused.empty:
        doc.note(
            "reused: a grid point whose effective configuration had already been trained (for example two full "
            "fine-tuning points that differ only in a LoRA rank they ignore); it carries its twin's result and "
            "counts once everywhere in this report."
        )
        doc.table(reused.assign(trial=tables.trial_ids(reused))[["trial", "reused from"]])
    reasons = tables.failure_reasons(s.df)
    if reasons.empty:
        doc.paragraph("No trial failed.")
    else:
        doc.paragraph("Failed trials by reason:")
        doc.table(reasons)


def judge(s: Sections) -> None:
    if not (s.df["task"] == "alpaca").any():
        return
    doc = s.doc
    doc.heading("Instruction tuning (alpaca): LLM judge")
    judged = tables.judge_table(s.df)
    if judged.empty:
        doc.paragraph("No alpaca trial was scored by the judge (no API key, or the judge was off).")
        return
    old = "val_judge_mean" not in s.df and "judge_mean" in s.df
    spread = judged["judge_std"].map(lambda x: "—" if pd.isna(x) else f"{x:.1f}")
    shown = tables.with_trial(judged)
    shown.insert(1, "judge (mean ± std)", judged["judge_mean"].map("{:.1f}".format) + " ± " + spread)
    doc.note(
        "Search trials: judge score (0-100, mean ± std over repeats and items) on the fixed validation prompts the "
        "search selects on, ROUGE-L F1 against the reference, and how many replies could not be parsed as a score "
        "(excluded, never scored 0). learned: no when the trial did no better than the untouched model or the "
        "majority class."
        + (
            " This study predates the split: its trials were judged on the test prompts during the search."
            if old
            else " The test prompts are judged only in confirmation runs (below)."
        )
    )
    doc.table(tables.blank_not_applicable(shown.drop(columns=["judge_mean", "judge_std"])))
    s.figure(lambda p: plots.judge_plot(judged, p), "judge", "judge score vs perplexity", s.studies_of(judged))
    confirmed = tables.confirmed_judge_table(s.df, confirmation_runs(s.df))
    if confirmed.empty:
        doc.paragraph("No confirmation run: the test prompts were not judged (hydra.sweeper.confirm.seeds > 0 does).")
        return
    doc.heading("Confirmed configurations: the test prompts", level=3)
    doc.note(
        "Each configuration chosen on validation, trained again with fresh seeds: the judge's mean on the test "
        "prompts and on the validation prompts over its confirmation runs, ± the half-width of the 95% interval "
        "(n: runs judged)."
    )
    doc.table(confirmed)


def studies(s: Sections) -> None:
    df, doc = s.df, s.doc
    doc.heading("Studies")
    rows = [
        {
            "study": st.study_name,
            "objectives": ", ".join(objective_names(st)),
            "directions": ", ".join(d.name.lower() for d in st.directions),
            "tasks": ", ".join(sorted(df.loc[df["study"] == st.study_name, "task"].dropna().astype(str).unique())),
            "trials": int((df["study"] == st.study_name).sum()),
        }
        for st in s.studies
    ]
    doc.table(pd.DataFrame(rows))


__all__ = ["curves", "history", "importances", "judge", "knobs", "pareto", "states", "studies"]
