"""The report's numbers as pandas tables, computed from the trials frame of `analysis.load`.

Every table is plain data (no formatting), so tests compare it with a direct pandas computation and the report
formats it once. Objectives differ between tasks, so tables group by task and objective (with its direction).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna
import pandas as pd

from analysis.schema import CONFIG_COLUMNS, COST_COLUMNS, FINETUNE_MODES, KNOBS, MODEL_ORDER, Knob

TASK_KEYS = ["task", "objective", "direction"]
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def complete(df: pd.DataFrame) -> pd.DataFrame:
    """Finished trials with a value: the only ones whose objective is comparable.

    A trial that reused an equivalent trial's result (user attribute `duplicate_of`) is left out, so a config
    counts once in means and fronts however many grid points mapped to it.
    """
    original = df["duplicate_of"].isna() if "duplicate_of" in df else True
    return df[(df["state"] == "COMPLETE") & df["value"].notna() & original]


def _score(df: pd.DataFrame) -> pd.Series:
    """The value oriented so that larger is better, whatever the direction."""
    return df["value"].where(df["direction"] == "maximize", -df["value"])


def best_per_group(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The best complete trial of each group (ties: the earliest)."""
    done = complete(df).dropna(subset=keys)
    if done.empty:
        return done
    index = _score(done).groupby([done[k] for k in keys], sort=True).idxmax()
    return done.loc[index.to_numpy()]


def compare_modes(df: pd.DataFrame) -> pd.DataFrame:
    """Best full fine-tuning vs best LoRA trial per task (and model size): objective and costs."""
    best = best_per_group(df[df["finetune"].isin(FINETUNE_MODES)], [*TASK_KEYS, "model", "finetune"])
    columns = [*TASK_KEYS, *CONFIG_COLUMNS, "value", *COST_COLUMNS, "study", "number"]
    return best[columns].reset_index(drop=True)


def trial_ids(rows: pd.DataFrame) -> pd.Series:
    """ "study#number": the trial to look up in the dashboard."""
    return rows["study"].astype(str) + "#" + rows["number"].astype(int).astype(str)


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole and not math.isnan(whole) and not math.isnan(part) else math.nan


def _change(name: str, lora: float, full: float) -> str | None:
    """ "41% less peak memory" / "12% more wall time"; None when a side is unknown."""
    pct = _pct(lora, full)
    if math.isnan(pct):
        return None
    return f"{abs(100 - pct):.0f}% {'less' if pct <= 100 else 'more'} {name}"


def ratio_sentence(full: pd.Series, lora: pd.Series) -> str:
    """One sentence: how close the best LoRA trial gets to the best full one, and at what cost."""
    rank = "" if pd.isna(lora["lora_rank"]) else f" r={lora['lora_rank']:.0f}"
    name, quality = full["objective"], _pct(lora["value"], full["value"])
    if math.isnan(quality):
        head = f"LoRA{rank} reaches {name} {lora['value']:.4g} against full fine-tuning's {full['value']:.4g}"
    elif full["direction"] == "maximize":
        versus = f"({lora['value']:.4g} vs {full['value']:.4g})"
        head = f"LoRA{rank} reaches {quality:.1f}% of full fine-tuning's {name} {versus}"
    else:
        head = (
            f"LoRA{rank} reaches a {name} of {lora['value']:.4g} against full fine-tuning's {full['value']:.4g} "
            f"({quality:.1f}% of it, lower is better)"
        )
    params = _pct(lora["trainable_params"], full["trainable_params"])
    costs = [f"{params:.2g}% of the trainable parameters"] if not math.isnan(params) else []
    costs += [c for c in (_change("peak memory", lora["peak_memory_mb"], full["peak_memory_mb"]),) if c]
    costs += [c for c in (_change("wall time", lora["wall_time_s"], full["wall_time_s"]),) if c]
    if not costs:
        return head + "."
    tail = costs[0] if len(costs) == 1 else ", ".join(costs[:-1]) + " and " + costs[-1]
    return f"{head} with {tail}."


def ratio_sentences(comparison: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(task, model) -> the ratio sentence, or why there is none."""
    out = {}
    for (task, _, _, model), group in comparison.groupby([*TASK_KEYS, "model"], sort=True):
        modes = group.set_index("finetune")
        if {"full", "lora"} <= set(modes.index):
            out[(task, model)] = ratio_sentence(modes.loc["full"], modes.loc["lora"])
        else:
            only = modes.index[0]
            out[(task, model)] = f"Only {only} fine-tuning finished here, so there is nothing to compare it with."
    return out


def swept_knobs(df: pd.DataFrame) -> list[Knob]:
    """Knobs that were swept (a param sets them) or vary among complete trials."""
    done = complete(df)
    found = []
    for knob in KNOBS:
        swept = any(f"params_{p}" in df for p in knob.params)
        varies = knob.attr in done and done.groupby("task")[knob.attr].nunique().gt(1).any()
        if knob.attr in df and (swept or varies) and done[knob.attr].notna().any():
            found.append(knob)
    return found


def knob_values(values: pd.Series, knob: Knob, max_levels: int = 8) -> pd.Series:
    """A knob's values as table rows: themselves when few, else (log-)evenly spaced bins, "lo to hi"."""
    numeric = pd.to_numeric(values, errors="coerce")
    if knob.categorical or numeric.isna().all() or numeric.nunique() <= max_levels:
        return values
    axis = np.log10(numeric) if knob.log else numeric
    bins = pd.cut(axis, bins=5)
    labels = {
        iv: f"{(10**iv.left if knob.log else iv.left):.2g} to {(10**iv.right if knob.log else iv.right):.2g}"
        for iv in bins.cat.categories
    }
    return bins.map(labels).astype(object)


def sort_key(values: pd.Series) -> pd.Series:
    """Sort key: model sizes by size, numbers by value, names alphabetically."""
    if values.isin(MODEL_ORDER).all():
        return values.map(MODEL_ORDER.index)
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return numeric
    # bin labels "lo to hi" sort by their lower end
    lower = pd.to_numeric(values.astype(str).str.extract(r"^(\S+) to ", expand=False), errors="coerce")
    return lower if lower.notna().all() else values.astype(str)


def knob_effects(df: pd.DataFrame, knob: Knob) -> pd.DataFrame:
    """Per task, fine-tuning mode and knob value: trials, mean and best objective over complete trials."""
    done = complete(df).dropna(subset=[knob.attr, "task", "finetune"])
    columns = [*TASK_KEYS, "finetune", knob.attr, "n", "mean", "best"]
    if done.empty:
        return pd.DataFrame(columns=columns)
    done = done.assign(**{knob.attr: knob_values(done[knob.attr], knob)})
    keys = [*TASK_KEYS, "finetune", knob.attr]
    grouped = done.groupby(keys, sort=False)["value"]
    table = grouped.agg(n="count", mean="mean", max="max", min="min").reset_index()
    table["best"] = table["max"].where(table["direction"] == "maximize", table["min"])
    table = table.assign(_key=sort_key(table[knob.attr]))
    return table.sort_values([*TASK_KEYS, "finetune", "_key"])[columns].reset_index(drop=True)


def state_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Trials per study and state (COMPLETE, PRUNED, FAIL, ...), with a total."""
    counts = pd.crosstab(df["study"], df["state"]) if not df.empty else pd.DataFrame()
    states = [s for s in STATES if s in counts] + [s for s in counts if s not in STATES]
    counts = counts.reindex(columns=states, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index()


def failure_reasons(df: pd.DataFrame) -> pd.DataFrame:
    """Failed trials grouped by study and reason, with their numbers."""
    failed = df[df["state"] == "FAIL"].assign(fail_reason=lambda d: d["fail_reason"].fillna("(no reason recorded)"))
    table = failed.groupby(["study", "fail_reason"], sort=True)["number"].agg(
        n="count", trials=lambda s: ", ".join(str(n) for n in sorted(s))
    )
    return table.reset_index().sort_values(["study", "n"], ascending=[True, False]).reset_index(drop=True)


def pareto_mask(score: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """True where no other point has a score at least as high and a cost at least as low, one strictly."""
    better_or_equal = (score[None, :] >= score[:, None]) & (cost[None, :] <= cost[:, None])
    strictly = (score[None, :] > score[:, None]) | (cost[None, :] < cost[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


def pareto_front(df: pd.DataFrame, cost: str) -> pd.DataFrame:
    """Complete trials with a known `cost`, flagged `pareto` on the front of objective vs cost, per task."""
    done = complete(df).dropna(subset=[cost, "task"])
    if done.empty:
        return done.assign(pareto=pd.Series(dtype=bool))
    flags = pd.Series(False, index=done.index)
    for _, group in done.groupby(TASK_KEYS):
        mask = pareto_mask(_score(group).to_numpy(float), group[cost].to_numpy(float))
        flags[group.index] = mask
    return done.assign(pareto=flags).sort_values([*TASK_KEYS, cost])


def judge_table(df: pd.DataFrame) -> pd.DataFrame:
    """Alpaca trials scored by the judge: judge mean and std, ROUGE-L, parse failures, perplexity."""
    columns = ["study", "number", *CONFIG_COLUMNS, "judge_mean", "judge_std", "judge_n_scored", "judge_n_failed"]
    columns += ["rouge_l", "val_perplexity"]
    if "judge_mean" not in df:
        return pd.DataFrame(columns=columns)
    scored = df[(df["task"] == "alpaca") & df["judge_mean"].notna()]
    scored = scored.reindex(columns=columns)
    return scored.sort_values("judge_mean", ascending=False).reset_index(drop=True)


def param_importances(study: optuna.Study) -> pd.DataFrame:
    """Importances of the swept params for the (first) objective, by Optuna's default evaluator (PED-ANOVA).

    Raises:
        ValueError: fewer than two complete trials, or no param that varies among them.
    """
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        raise ValueError(f"importances need at least 2 complete trials, but got {len(done)}")
    varied = [p for p in {p for t in done for p in t.params} if len({repr(t.params.get(p)) for t in done}) > 1]
    if not varied:
        raise ValueError("importances need a param that varies among the complete trials, but none does")
    target = None
    if len(study.directions) > 1:  # the evaluator ranks low targets as good: orient the first objective
        sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        target = lambda t: sign * t.values[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*computes the importances of params to achieve low")
        importances = optuna.importance.get_param_importances(study, target=target)
    return pd.DataFrame({"param": list(importances), "importance": list(importances.values())})
