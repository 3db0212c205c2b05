"""Study → DataFrame → report: where LoRA matches full fine-tuning, and what it saves.

    python -m analysis.report --storage sqlite:///sweeps.db [--study NAME ...] [--out DIR]

Plotting modules import matplotlib; they load only when the report (or `analysis.plots`) is used.
"""

from analysis.load import ReportInputError, export, intermediate_long, load_studies, open_storage, trials_frame
from analysis.tables import (
    compare_modes,
    failure_reasons,
    judge_table,
    knob_effects,
    param_importances,
    pareto_front,
    state_counts,
    swept_knobs,
)
from analysis.verdicts import Arm, Baseline, Margin, Verdict, compare, verdicts_from_frame

__all__ = [
    "Arm",
    "Baseline",
    "Margin",
    "ReportInputError",
    "Verdict",
    "compare",
    "compare_modes",
    "export",
    "failure_reasons",
    "intermediate_long",
    "judge_table",
    "knob_effects",
    "load_studies",
    "open_storage",
    "param_importances",
    "pareto_front",
    "state_counts",
    "swept_knobs",
    "trials_frame",
    "verdicts_from_frame",
]
