"""The report's sections, in reading order: each takes the trials frame (and studies) and adds blocks.

A section with nothing to show says why in one sentence instead of disappearing, so a reader of a half-failed
sweep learns what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd

from analysis import plots, tables
from analysis.document import Document
from analysis.load import objective_names
from analysis.schema import CONFIG_COLUMNS

logger = logging.getLogger(__name__)

FIGURES = "figures"


class Sections:
    """Builds one Document; figures go to `<folder>/figures/` and are referenced relative to `folder`."""

    def __init__(self, df: pd.DataFrame, studies: list[optuna.Study], folder: Path, title: str) -> None:
        self.df, self.studies, self.folder = df, studies, folder
        self.doc = Document(title)

    def figure(self, draw: Callable[[Path], Path | None], name: str, alt: str) -> None:
        """Draw one PNG; a plot that cannot be drawn becomes a sentence, not a crash."""
        try:
            path = draw(self.folder / FIGURES / f"{name}.png")
        except Exception as exc:  # a plotting corner case must not cost the whole report
            logger.warning("figure %s not drawn: %s", name, exc)
            self.doc.paragraph(f"Figure '{alt}' could not be drawn: {exc}")
            return
        if path is not None:
            self.doc.image(f"{FIGURES}/{path.name}", alt)

    def build(self) -> Document:
        steps = [
            ("overview", self.overview),
            ("full fine-tuning vs LoRA", self.comparison),
            ("knob effects", self.knobs),
            ("optimization history", self.history),
            ("parameter importances", self.importances),
            ("Pareto fronts", self.pareto),
            ("trial states", self.states),
            ("LLM judge", self.judge),
        ]
        for i, (name, step) in enumerate(steps, 1):
            logger.info("[%d/%d] %s", i, len(steps), name)
            step()
        return self.doc

    def overview(self) -> None:
        df, doc = self.df, self.doc
        counts = df["state"].value_counts()
        words = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
        parts = [f"{counts[s]} {word}" for s, word in words.items() if counts.get(s, 0)]
        studies = f"{len(self.studies)} {'study' if len(self.studies) == 1 else 'studies'}"
        trials = f"{len(df)} {'trial' if len(df) == 1 else 'trials'}"
        doc.paragraph(f"{trials} in {studies}" + (f": {', '.join(parts)}." if parts else "."))
        if tables.complete(df).empty:
            doc.paragraph(
                "No trial finished with a value, so there is nothing to compare yet: 'Trial states and failures' "
                "below says where the trials are and why any failed."
            )
        rows = [
            {
                "study": s.study_name,
                "objectives": ", ".join(objective_names(s)),
                "directions": ", ".join(d.name.lower() for d in s.directions),
                "tasks": ", ".join(sorted(df.loc[df["study"] == s.study_name, "task"].dropna().astype(str).unique())),
                "trials": int((df["study"] == s.study_name).sum()),
            }
            for s in self.studies
        ]
        doc.table(pd.DataFrame(rows))

    def comparison(self) -> None:
        doc = self.doc
        doc.heading("Full fine-tuning vs LoRA, per task")
        compared = tables.compare_modes(self.df)
        if compared.empty:
            doc.paragraph("No complete trial records its task and fine-tuning mode, so no comparison is possible.")
            return
        doc.paragraph(
            "The best complete trial of each fine-tuning mode per task and model size: its objective, what it "
            "trains (count and % of all parameters), and what it costs."
        )
        doc.table(_with_trial(compared).drop(columns=["direction"]))
        sentences = tables.ratio_sentences(compared)
        doc.bullets([f"{task} ({model}): {text}" for (task, model), text in sentences.items()])

    def knobs(self) -> None:
        doc = self.doc
        doc.heading("Effects of each knob")
        knobs = tables.swept_knobs(self.df)
        if not knobs:
            doc.paragraph("No knob was swept or varied among complete trials.")
            return
        doc.paragraph(
            "Mean and best objective over complete trials per knob value, split by fine-tuning mode (continuous "
            "knobs in bins). Plots show each trial and the mean per value; the rank plot's dashed line is the best "
            "full fine-tuning trial, the level LoRA has to reach."
        )
        for knob in knobs:
            doc.heading(knob.label, level=3)
            doc.table(tables.knob_effects(self.df, knob).drop(columns=["direction"]))
            self.figure(lambda p, k=knob: plots.knob_plot(self.df, k, p), f"knob_{knob.attr}", knob.label)

    def history(self) -> None:
        doc = self.doc
        doc.heading("Optimization history")
        for study in self.studies:
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not done:
                doc.paragraph(f"{study.study_name}: no complete trial, no history.")
                continue
            name = plots.slug(study.study_name)
            self.figure(lambda p, s=study: plots.history_plot(s, p), f"history_{name}", f"history of {name}")
            self.figure(
                lambda p, s=study.study_name: plots.intermediate_plot(self.df, s, p),
                f"intermediate_{name}",
                f"intermediate values of {name} (pruning)",
            )

    def importances(self) -> None:
        doc = self.doc
        doc.heading("Parameter importances")
        for study in self.studies:
            try:
                table = tables.param_importances(study)
            except (ValueError, RuntimeError) as exc:
                doc.paragraph(f"{study.study_name}: not computed, {exc}.")
                continue
            doc.heading(study.study_name, level=3)
            doc.table(table)
            name = plots.slug(study.study_name)
            self.figure(lambda p, s=study: plots.importance_plot(s, p), f"importance_{name}", f"importances {name}")

    def pareto(self) -> None:
        doc = self.doc
        doc.heading("Pareto fronts: objective vs cost")
        doc.paragraph(
            "All complete trials of a task; the line joins the trials no other trial beats on both the objective "
            "and the cost."
        )
        for cost in ("trainable_params", "peak_memory_mb"):
            front = tables.pareto_front(self.df, cost)
            if front.empty:
                doc.paragraph(f"No complete trial records {cost}.")
                continue
            optimal = front[front["pareto"]]
            doc.heading(f"objective vs {cost}", level=3)
            doc.table(_with_trial(optimal[["task", "objective", *CONFIG_COLUMNS, "value", cost, "study", "number"]]))
            self.figure(lambda p, c=cost: plots.cost_front_plot(self.df, c, p), f"pareto_{cost}", f"front vs {cost}")
        for study in self.studies:
            if len(study.directions) < 2 or len(study.directions) > 3:
                continue
            doc.heading(f"{study.study_name}: the study's own Pareto front", level=3)
            best = study.best_trials
            keep = ["number", "value", *(c for c in self.df if c.startswith("value_")), *CONFIG_COLUMNS]
            rows = self.df[(self.df["study"] == study.study_name) & self.df["number"].isin([t.number for t in best])]
            doc.table(rows[[c for c in keep if c in rows]].dropna(axis=1, how="all"))
            name = plots.slug(study.study_name)
            if best:
                self.figure(lambda p, s=study: plots.pareto_plot(s, p), f"pareto_{name}", f"Pareto front {name}")

    def states(self) -> None:
        doc = self.doc
        doc.heading("Trial states and failures")
        doc.table(tables.state_counts(self.df))
        reasons = tables.failure_reasons(self.df)
        if reasons.empty:
            doc.paragraph("No trial failed.")
        else:
            doc.paragraph("Failed trials by reason:")
            doc.table(reasons)

    def judge(self) -> None:
        if not (self.df["task"] == "alpaca").any():
            return
        doc = self.doc
        doc.heading("Instruction tuning (alpaca): LLM judge")
        judged = tables.judge_table(self.df)
        if judged.empty:
            doc.paragraph("No alpaca trial was scored by the judge (no API key, or the judge was off).")
            return
        spread = judged["judge_std"].map(lambda s: "-" if pd.isna(s) else f"{s:.1f}")
        shown = _with_trial(judged)
        shown.insert(1, "judge (mean ± std)", judged["judge_mean"].map("{:.1f}".format) + " ± " + spread)
        doc.paragraph(
            "Judge score (0-100, mean ± std over repeats and items) per configuration, ROUGE-L F1 against the "
            "reference, and how many replies could not be parsed as a score (excluded, never scored 0)."
        )
        doc.table(shown.drop(columns=["judge_mean", "judge_std"]))
        self.figure(lambda p: plots.judge_plot(judged, p), "judge", "judge score vs perplexity")


def _with_trial(rows: pd.DataFrame) -> pd.DataFrame:
    """`study` and `number` folded into one `trial` column ("study#number"), first."""
    trial = tables.trial_ids(rows)
    return rows.drop(columns=["study", "number"]).assign(trial=trial)[
        ["trial", *rows.columns.drop(["study", "number"])]
    ]
