"""The report's sections, in reading order: the answer first, then the evidence, then the details.

A section with nothing to show says why in one sentence instead of disappearing, so a reader of a half-failed
sweep learns what is missing. The detail sections live in `analysis.details`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import optuna
import pandas as pd

from analysis import answer, details, tables
from analysis.answer_plot import answer_plot
from analysis.document import Document
from analysis.plots import slug
from analysis.runs import MISSING_FIELD_HINT
from analysis.schema import CONFIG_COLUMNS, COST_COLUMNS
from analysis.verdicts import Margin, Verdict, swept_config, unpaired_groups, verdicts_from_frame

logger = logging.getLogger(__name__)

FIGURES = "figures"
DETAIL_COLUMNS = ("trial", "task", "objective", "model", "finetune", "lora_rank", "freeze_blocks", "epochs_trained")


class Sections:
    """Builds one Document; figures go to `<folder>/figures/` and are referenced relative to `folder`.

    `owners` maps each figure (relative path) to the studies it shows, so the dashboard upload attaches it to them.
    """

    def __init__(
        self, df: pd.DataFrame, studies: list[optuna.Study], folder: Path, title: str, margin: Margin | None = None
    ) -> None:
        self.df, self.studies, self.folder = df, studies, folder
        self.margin = margin or Margin()
        self.doc = Document(title)
        self.verdicts: list[Verdict] = verdicts_from_frame(df, self.margin)
        self.owners: dict[str, set[str]] = {}

    def figure(
        self, draw: Callable[[Path], Path | None], name: str, alt: str, studies: Iterable[str] | None = None
    ) -> None:
        """Draw one PNG; a plot that cannot be drawn becomes a sentence, not a crash."""
        try:
            path = draw(self.folder / FIGURES / f"{name}.png")
        except Exception as exc:  # a plotting corner case must not cost the whole report
            logger.warning("figure %s not drawn: %s", name, exc)
            self.doc.paragraph(f"Figure '{alt}' could not be drawn: {exc}")
            return
        if path is not None:
            relative = f"{FIGURES}/{path.name}"
            self.doc.image(relative, alt)
            self.owners[relative] = set(studies) if studies is not None else {s.study_name for s in self.studies}

    def studies_of(self, rows: pd.DataFrame) -> set[str]:
        return set(rows["study"].astype(str))

    def build(self) -> Document:
        steps = [
            ("the answer", self.answer),
            ("one picture per task", self.pictures),
            ("best trial per mode", self.comparison),
            ("knob effects", lambda: details.knobs(self)),
            ("validation curves", lambda: details.curves(self)),
            ("optimisation history", lambda: details.history(self)),
            ("parameter importances", lambda: details.importances(self)),
            ("Pareto fronts", lambda: details.pareto(self)),
            ("trial states", lambda: details.states(self)),
            ("LLM judge", lambda: details.judge(self)),
            ("studies", lambda: details.studies(self)),
        ]
        for i, (name, step) in enumerate(steps, 1):
            logger.info("[%d/%d] %s", i, len(steps), name)
            step()
        return self.doc

    def scope(self) -> str:
        """ "From 8 trials in 1 study (sms-tiny): 4 complete, 2 reused a twin's result (counted once), ..." """
        df = self.df
        state = tables.shown_states(df).str.upper()
        counts = state.value_counts()
        words = {
            "COMPLETE": "complete",
            "REUSED": "reused a finished twin's result (counted once)",
            "CONFIRMATION": "confirmation runs (the chosen configurations with fresh seeds)",
            "PRUNED": "pruned",
            "FAIL": "failed",
            "RUNNING": "running",
        }
        parts = [f"{counts[s]} {word}" for s, word in words.items() if counts.get(s, 0)]
        names = ", ".join(s.study_name for s in self.studies)
        study = "study" if len(self.studies) == 1 else "studies"
        trials = "trial" if len(df) == 1 else "trials"
        return f"From {len(df)} {trials} in {len(self.studies)} {study} ({names})" + (
            f": {', '.join(parts)}." if parts else "."
        )

    def answer(self) -> None:
        doc = self.doc
        doc.paragraph(self.scope())
        if tables.complete(self.df).empty:
            doc.paragraph(
                "No trial finished with a value, so there is nothing to compare yet: 'Trial states and failures' "
                "below says where the trials are and why any failed."
            )
            return
        lines = map(answer.verdict_line, self.verdicts)
        doc.verdicts([(line.title, line.outcome, line.text, line.details) for line in lines])
        doc.bullets([answer.unpaired_line(*group) for group in unpaired_groups(self.df)])
        if not self.verdicts:
            return
        doc.note(
            "Each line compares the best LoRA and the best full fine-tuning configuration of a task and model size "
            "on the validation objective. Matches: the difference lies within the margin; better or worse: "
            "outside it"
            + (
                "; these are single runs, so a difference can be seed noise until confirmation runs repeat them."
                if not all(v.confirmed for v in self.verdicts)
                else "; undecided: the 95% interval of the difference crosses the margin."
            )
        )
        doc.heading("What LoRA saves", level=3)
        doc.note(
            "Each cell: LoRA / full fine-tuning, for the two configurations compared above (means over the seeds "
            "when confirmed). tokens/s: the steady-state median (warm-up and evaluation left out), within noise "
            "when the p10-p90 ranges of single runs overlap or the seeds' interval of the change contains none; "
            "peak memory: only runs that measured their own (peak_memory_own). The test split's figure of these "
            "runs is in each verdict's details: they were chosen on validation, never by it."
        )
        doc.table(answer.saves_table(self.verdicts))

    def pictures(self) -> None:
        doc = self.doc
        doc.heading("The answer in one picture per task")
        done = tables.complete(self.df).dropna(subset=["task", "finetune"])
        if done.empty or done["trainable_params"].isna().all():
            doc.paragraph("No complete trial records its trainable parameters, so there is nothing to draw.")
            return
        doc.note(
            "Objective against trainable parameters (log axis). Large markers: the best trial of each LoRA "
            "configuration and of full fine-tuning; faint ones: every other trial. The blue band is full "
            "fine-tuning's value ± the margin (its 95% interval when confirmed): a LoRA point inside it matches. "
            "Dotted: always answering the majority class; dash-dotted: the untouched model (evaluated before "
            "training). A point at or below them learned nothing."
        )
        for key, rows in done.groupby(tables.TASK_KEYS, sort=True):
            name = slug(f"answer_{key[0]}_{key[1]}")
            self.figure(
                lambda p, k=key: answer_plot(self.df, k, self.verdicts, self.margin, p),
                name,
                f"{key[0]}: {key[1]} against trainable parameters",
                self.studies_of(rows),
            )

    def comparison(self) -> None:
        doc = self.doc
        doc.heading("Best trial per fine-tuning mode")
        compared = tables.compare_modes(self.df)
        if compared.empty:
            doc.paragraph("No complete trial records its task and fine-tuning mode, so no comparison is possible.")
            return
        doc.note(
            "The best complete search trial of each fine-tuning mode per task and model size, chosen on the "
            "validation objective (value); test: the same trial's test figure, never used to choose; learned: no "
            "when it did no better than the majority class or the untouched model. config: the swept settings "
            "(LoRA's only for LoRA trials); epochs_trained: the fraction of the training split seen (steps / steps "
            "per epoch)."
        )
        shown = compared.assign(config=[_config_text(row) for _, row in compared.iterrows()])
        shown = tables.with_trial(shown)
        columns = [*DETAIL_COLUMNS, "value", "test", "learned", *COST_COLUMNS, "train_time_s", "config"]
        doc.table(tables.blank_not_applicable(shown[columns]))
        self.epochs_note(compared)

    def epochs_note(self, rows: pd.DataFrame) -> None:
        unknown = rows[rows["epochs_trained"].isna()]
        if unknown.empty:
            return
        ids = ", ".join(tables.trial_ids(unknown))
        self.doc.note(
            f"epochs_trained is unknown (—) for {ids}: they predate the trainer's {MISSING_FIELD_HINT}, and their "
            "run folder's metrics.json could not be read here."
        )


def _config_text(row: pd.Series) -> str:
    config = swept_config(row)
    config.pop("finetune", None)
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


__all__ = ["CONFIG_COLUMNS", "FIGURES", "Sections"]
