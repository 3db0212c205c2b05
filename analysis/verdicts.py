"""Does LoRA match full fine-tuning? One verdict per task and model size, with its uncertainty.

A verdict compares two arms, the best LoRA configuration and the best full fine-tuning configuration, each with its
objective values (one per seed) and costs. Today an arm holds one value: the search trial itself, a single run.
Confirmation runs (issue [12]) re-train a chosen configuration with fresh seeds; they are trials with the user
attributes `phase="confirm"` and `confirms=<number of the search trial they repeat>` (same study), and
`verdicts_from_frame` then fills each arm with their values, so intervals and verdicts appear without other changes.

Decision, with d = LoRA - full oriented so that positive means LoRA is better and a margin m:
- confirmed (two seeds or more on both sides, Welch's 95% interval [lo, hi] of d):
  matches when -m <= lo and hi <= m; worse when hi < 0 and lo < -m; better when lo > 0 and hi > m; otherwise
  undecided (run more seeds);
- single runs: matches when |d| <= m, else worse or better, and every sentence says it is not confirmed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from analysis import stats, wording
from analysis.schema import (
    CONFIRM_PHASE,
    CONFIRMS_ATTR,
    FINETUNE_MODES,
    MODEL_ORDER,
    PHASE_ATTR,
    is_fraction_objective,
    lora_variant_keys,
    split_key,
)
from analysis.tables import TASK_KEYS, complete, memory_not_own

OUTCOMES = ("matches", "better", "worse", "undecided")
# what an arm costs, per seed: the columns of "what it saves"
COST_KEYS = ("trainable_params", "trainable_pct", "total_params", "peak_memory_mb", "tokens_per_s", "train_time_s")
# the steady-state spread of a run's tokens/s: with single runs, a change inside both ranges is "within noise"
SPREAD_KEYS = ("tokens_per_s_p10", "tokens_per_s_p90")
UNTOUCHED = "the untouched model (evaluated before training)"


@dataclass(frozen=True)
class Margin:
    """How close counts as "matches": `points` on a 0-1 scale (0.01 = one accuracy point), else `relative`.

    Objectives bounded in [0, 1] (accuracy, macro-F1, ROUGE-L) use the absolute margin; every other objective
    (loss, perplexity, judge score) a fraction of full fine-tuning's value.
    """

    points: float = 0.01
    relative: float = 0.02

    def width(self, objective: str, reference: float) -> float:
        """The margin in the objective's own units."""
        return self.points if is_fraction_objective(objective) else self.relative * abs(reference)

    def describe(self, objective: str) -> str:
        if is_fraction_objective(objective):
            return f"±{_trim(100 * self.points)} point{'' if 100 * self.points == 1 else 's'}"
        return f"±{_trim(100 * self.relative)}% of full fine-tuning's value"


def _trim(x: float) -> str:
    return f"{x:.3g}"


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a configuration, its objective per seed and its costs per seed.

    `values` has one entry per run (a single search trial: one entry); `costs` maps a COST_KEYS name to its values
    per run (missing costs are absent); `trials` names the runs ("study#number"), the search trial first.
    """

    label: str  # "LoRA r=8", "full fine-tuning with the embeddings and blocks 0-3 frozen"
    trial: str  # the search trial whose configuration this is, "study#number"
    values: tuple[float, ...]
    costs: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    trials: tuple[str, ...] = ()
    config: Mapping[str, object] = field(default_factory=dict)  # the knobs that were swept, as set for this arm
    tests: tuple[float, ...] = ()  # the test split's figure per run (never used to choose; NaN when not measured)
    memory_not_own: tuple[str, ...] = ()  # runs whose peak memory is the process's, left out of memory comparisons

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def interval(self) -> stats.Interval | None:
        """95% Student t interval of the mean; None for a single run."""
        return stats.mean_interval(self.values)

    def cost(self, key: str) -> float:
        """Mean of a cost over the runs, NaN when not recorded."""
        return _mean(self.costs.get(key, ()))

    @property
    def test(self) -> float:
        """Mean of the test figure over the runs, NaN when not measured."""
        return _mean(self.tests)

    def spread(self, key: str) -> tuple[float, float] | None:
        """A single run's steady-state (p10, p90) range of `key` (tokens_per_s); None unless one run recorded it."""
        low, high = self.costs.get(f"{key}_p10", ()), self.costs.get(f"{key}_p90", ())
        if self.n != 1 or len(low) != 1 or len(high) != 1 or math.isnan(low[0]) or math.isnan(high[0]):
            return None
        return low[0], high[0]


def _mean(values: tuple[float, ...]) -> float:
    known = [v for v in values if v is not None and not math.isnan(v)]
    return math.fsum(known) / len(known) if known else math.nan


@dataclass(frozen=True)
class Baseline:
    """A reference level a trial must beat to have learned anything (e.g. always predicting the majority class)."""

    name: str
    value: float


@dataclass(frozen=True)
class Verdict:
    """LoRA against full fine-tuning for one task and model size."""

    task: str
    model: str
    objective: str
    direction: str  # "maximize" or "minimize"
    lora: Arm
    full: Arm
    margin: float  # in the objective's units
    margin_text: str  # "±1 point"
    outcome: str  # one of OUTCOMES
    interval: stats.Interval | None  # Welch interval of lora - full (raw units); None unless confirmed
    baseline: Baseline | None = None  # always answering the majority class
    untouched: Baseline | None = None  # the model before training (median of the group's step-0 evaluations)

    @property
    def confirmed(self) -> bool:
        return self.interval is not None

    @property
    def difference(self) -> float:
        """LoRA minus full fine-tuning, in the objective's units (not oriented)."""
        return self.lora.mean - self.full.mean

    @property
    def references(self) -> list[Baseline]:
        return [b for b in (self.baseline, self.untouched) if b is not None]

    def not_beaten(self, arm: Arm) -> list[Baseline]:
        """The references `arm` does not beat by more than the margin."""
        sign = 1.0 if self.direction == "maximize" else -1.0
        return [b for b in self.references if sign * (arm.mean - b.value) <= self.margin]

    def at_baseline(self, arm: Arm) -> bool:
        """True when `arm` is no better than a reference (the majority class, the untouched model) by more than
        the margin: it learned nothing."""
        return bool(self.not_beaten(arm))


def decide(gain: float, interval: tuple[float, float] | None, margin: float) -> str:
    """The outcome for an oriented difference `gain` (positive: LoRA better) and, when confirmed, its interval."""
    if interval is None:
        if abs(gain) <= margin:
            return "matches"
        return "better" if gain > 0 else "worse"
    low, high = interval
    if -margin <= low and high <= margin:
        return "matches"
    if high < 0 and low < -margin:
        return "worse"
    if low > 0 and high > margin:
        return "better"
    return "undecided"


def compare(
    task: str,
    model: str,
    objective: str,
    direction: str,
    lora: Arm,
    full: Arm,
    margin: Margin | None = None,
    baseline: Baseline | None = None,
    untouched: Baseline | None = None,
) -> Verdict:
    """The verdict for two arms; confirmed (with an interval) when each arm has two runs or more."""
    margin = margin or Margin()
    width = margin.width(objective, full.mean)
    interval = stats.welch_interval(lora.values, full.values)
    sign = 1.0 if direction == "maximize" else -1.0
    oriented = None if interval is None else tuple(sorted((sign * interval.low, sign * interval.high)))
    outcome = decide(sign * (lora.mean - full.mean), oriented, width)
    return Verdict(
        task,
        model,
        objective,
        direction,
        lora,
        full,
        width,
        margin.describe(objective),
        outcome,
        interval,
        baseline,
        untouched,
    )


# ------------------------------------------------------------------------------------------ from the trials frame


def confirmation_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Complete confirmation trials (phase "confirm") with the search trial they repeat; empty when none."""
    if PHASE_ATTR not in df or CONFIRMS_ATTR not in df:
        return df.iloc[0:0].assign(**{CONFIRMS_ATTR: pd.Series(dtype=float)})
    runs = df[(df[PHASE_ATTR] == CONFIRM_PHASE) & (df["state"] == "COMPLETE") & df["value"].notna()]
    return runs[runs[CONFIRMS_ATTR].notna()]


def _costs(rows: pd.DataFrame) -> dict[str, tuple[float, ...]]:
    out = {}
    for key in (*COST_KEYS, *SPREAD_KEYS):
        column = key if key in rows else None
        if key == "train_time_s" and (column is None or rows[key].isna().all()):
            column = "wall_time_s" if "wall_time_s" in rows else None  # older runs record only the wall time
        if column is not None and rows[column].notna().any():
            values = pd.to_numeric(rows[column], errors="coerce")
            if key == "peak_memory_mb":
                values = values.mask(memory_not_own(rows))
            out[key] = tuple(float(v) for v in values)
    return out


def _tests(rows: pd.DataFrame) -> tuple[float, ...]:
    """Each run's test figure of the objective it was chosen by (`test_accuracy` for `accuracy`)."""
    keys = [split_key(str(o), "test") for o in rows["objective"]]
    return tuple(
        float(pd.to_numeric(row.get(k), errors="coerce")) if k and k in row else math.nan
        for k, (_, row) in zip(keys, rows.iterrows(), strict=True)
    )


def arm_from_rows(label: str, search: pd.Series, runs: pd.DataFrame) -> Arm:
    """An arm from its search trial and its confirmation runs (if any, they replace the search trial's value)."""
    trial = f"{search['study']}#{int(search['number'])}"
    rows = runs if not runs.empty else search.to_frame().T
    ids = tuple(f"{s}#{int(n)}" for s, n in zip(rows["study"], rows["number"], strict=True))
    values = tuple(float(v) for v in rows["value"])
    not_own = tuple(i for i, bad in zip(ids, memory_not_own(rows), strict=True) if bad)
    return Arm(label, trial, values, _costs(rows), ids, swept_config(search), _tests(rows), not_own)


def swept_config(row: pd.Series) -> dict[str, object]:
    """The swept params of a trial as set, without the `lora.*` ones for a full fine-tuning trial (ignored there)."""
    config = {}
    for column, value in row.items():
        if not str(column).startswith("params_") or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        name = str(column)[len("params_") :]
        if row.get("finetune") != "lora" and name.startswith("lora."):
            continue
        config[name] = value.item() if hasattr(value, "item") else value
    return config


def lora_label(row: pd.Series, keys: list[str]) -> str:
    """ "LoRA r=8", "LoRA r=8, variant=dora": the LoRA keys that tell configurations apart."""
    parts = []
    for key in keys:
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        short = "r" if key == "lora_rank" else key.removeprefix("params_").removeprefix("lora_").removeprefix("lora.")
        parts.append(f"{short}={int(value) if isinstance(value, float) and value.is_integer() else value}")
    return "LoRA" + (" " + ", ".join(parts) if parts else "")


def lora_keys(df: pd.DataFrame) -> list[str]:
    """The LoRA keys that vary among the LoRA trials of `df` (rank always, when recorded)."""
    lora = df[df["finetune"] == "lora"]
    return [k for k in lora_variant_keys(df) if k == "lora_rank" or lora[k].nunique(dropna=True) > 1]


def full_label(row: pd.Series) -> str:
    """ "full fine-tuning", or "full fine-tuning with the embeddings and blocks 0-3 frozen" when it froze any."""
    what = wording.frozen(row.get("freeze_blocks", math.nan), row.get("n_layer"))
    return "full fine-tuning" + (f" with the {what}" if what else "")


def _best_arm(rows: pd.DataFrame, runs: pd.DataFrame, direction: str, label: Callable[[pd.Series], str]) -> Arm:
    """The mode's arm: among configurations with confirmation runs the best confirmed mean, else the best trial."""
    sign = 1.0 if direction == "maximize" else -1.0
    confirmed = []
    for _, row in rows.iterrows():
        own = runs[(runs["study"] == row["study"]) & (runs[CONFIRMS_ATTR].astype(float) == float(row["number"]))]
        if not own.empty:
            confirmed.append(arm_from_rows(label(row), row, own))
    if confirmed:
        return max(confirmed, key=lambda arm: sign * arm.mean)
    best = rows.loc[(sign * rows["value"]).idxmax()]  # ties: the earliest (rows are in trial order)
    return arm_from_rows(label(best), best, runs.iloc[0:0])


def _baseline(group: pd.DataFrame) -> Baseline | None:
    known = group.dropna(subset=["baseline_value"]) if "baseline_value" in group else group.iloc[0:0]
    if known.empty:
        return None
    row = known.iloc[0]
    majority = row.get("baseline_class")
    name = f'always answering "{majority}" (the majority class)' if majority else "the majority class"
    return Baseline(name, float(row["baseline_value"]))


def _untouched(group: pd.DataFrame) -> Baseline | None:
    """The model before training, on the objective: the median of the group's step-0 evaluations (a random head
    or adapter initialisation differs between trials)."""
    values = pd.to_numeric(group["untouched_value"], errors="coerce").dropna() if "untouched_value" in group else []
    return Baseline(UNTOUCHED, float(values.median())) if len(values) else None


def verdicts_from_frame(df: pd.DataFrame, margin: Margin | None = None) -> list[Verdict]:
    """One verdict per task, objective and model size that has both a LoRA and a full fine-tuning trial."""
    search = complete(df)
    runs = confirmation_runs(df)
    keys = lora_keys(search)
    out = []
    groups = search[search["finetune"].isin(FINETUNE_MODES)].dropna(subset=[*TASK_KEYS, "model"])
    for (task, objective, direction, model), group in groups.groupby([*TASK_KEYS, "model"], sort=False):
        modes = {mode: rows for mode, rows in group.groupby("finetune")}
        if set(modes) != {"full", "lora"}:
            continue
        lora = _best_arm(modes["lora"], runs, direction, lambda r: lora_label(r, keys))
        full = _best_arm(modes["full"], runs, direction, full_label)
        out.append(compare(task, model, objective, direction, lora, full, margin, _baseline(group), _untouched(group)))
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return sorted(out, key=lambda v: (v.task, order.get(v.model, len(order)), v.model))


def unpaired_groups(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(task, model, the only mode) for task/model groups where only one fine-tuning mode finished."""
    done = complete(df).dropna(subset=["task", "model", "finetune"])
    out = []
    for (task, model), group in done.groupby(["task", "model"], sort=True):
        modes = set(group["finetune"]) & set(FINETUNE_MODES)
        if len(modes) == 1:
            out.append((str(task), str(model), modes.pop()))
    return out
