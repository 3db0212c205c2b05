"""The report's numbers as pandas tables, computed from the trials frame of `analysis.load`.

Every table is plain data (no formatting), so tests compare it with a direct pandas computation and the report
formats it once. Objectives differ between tasks, so tables group by task and objective (with its direction).
"""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pandas as pd

from analysis.schema import (
    CONFIG_COLUMNS,
    CONFIRM_PHASE,
    COST_COLUMNS,
    FINETUNE_MODES,
    KNOBS,
    MODEL_ORDER,
    PHASE_ATTR,
    Knob,
    is_lora_only,
    split_key,
)

TASK_KEYS = ["task", "objective", "direction"]
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def complete(df: pd.DataFrame) -> pd.DataFrame:
    """Finished search trials with a value: the only ones whose objective is comparable.

    A trial that reused an equivalent trial's result (user attribute `duplicate_of`) is left out, so a config
    counts once in means and fronts however many grid points mapped to it; so is a confirmation run (it repeats a
    search trial with another seed: the verdicts use it, the search tables do not).
    """
    original = df["duplicate_of"].isna() if "duplicate_of" in df else True
    search = df[PHASE_ATTR].ne(CONFIRM_PHASE) if PHASE_ATTR in df else True
    return df[(df["state"] == "COMPLETE") & df["value"].notna() & original & search]


def is_duplicate(df: pd.DataFrame) -> pd.Series:
    """True for trials that reused a finished twin's result instead of training (user attribute `duplicate_of`)."""
    return df["duplicate_of"].notna() if "duplicate_of" in df else pd.Series(False, index=df.index)


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
    """Best full fine-tuning vs best LoRA trial per task (and model size), chosen on the validation objective:
    objective, the same trial's test figure (`test`), whether it learned anything, and costs."""
    best = best_per_group(df[df["finetune"].isin(FINETUNE_MODES)], [*TASK_KEYS, "model", "finetune"])
    best = best.assign(test=own_test_figures(best), learned=learned_text(best))
    columns = [*TASK_KEYS, *CONFIG_COLUMNS, "value", "test", "learned", *COST_COLUMNS, "train_time_s"]
    extra = [c for c in best if str(c).startswith("params_") or c in ("n_layer", "baseline_value")]
    return best[[*columns, "study", "number", *extra]].reset_index(drop=True)


def own_test_figures(rows: pd.DataFrame) -> pd.Series:
    """Each trial's own test figure of its objective (`test_accuracy` for `accuracy`), NaN when not measured: the
    figure of a trial chosen on validation, never a column to choose by."""
    values = []
    for _, row in rows.iterrows():
        key = split_key(str(row.get("objective")), "test")
        values.append(pd.to_numeric(row.get(key), errors="coerce") if key and key in row else np.nan)
    return pd.Series(values, index=rows.index, dtype=float)


def learned_text(rows: pd.DataFrame) -> pd.Series:
    """ "no: at majority class" for a trial that learned nothing (`learned` false, with its flags), "yes", or ""
    when the trial did not record it."""

    def text(learned: object, flags: object) -> str:
        if learned is True or learned == 1:
            return "yes"
        if learned is False or learned == 0:
            return f"no: {flags}" if isinstance(flags, str) and flags else "no"
        return ""

    learned = rows["learned"] if "learned" in rows else pd.Series(None, index=rows.index)
    flags = rows["flags"] if "flags" in rows else pd.Series(None, index=rows.index)
    return pd.Series([text(a, b) for a, b in zip(learned, flags, strict=True)], index=rows.index, dtype=object)


def trial_ids(rows: pd.DataFrame) -> pd.Series:
    """ "study#number": the trial to look up in the dashboard."""
    return rows["study"].astype(str) + "#" + rows["number"].astype(int).astype(str)


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


def is_confirmation(df: pd.DataFrame) -> pd.Series:
    """True for confirmation runs (user attribute phase="confirm")."""
    return df[PHASE_ATTR].eq(CONFIRM_PHASE) if PHASE_ATTR in df else pd.Series(False, index=df.index)


def shown_states(df: pd.DataFrame) -> pd.Series:
    """A trial's state as the report counts it: a complete trial that reused a twin's result is `reused` (it trained
    nothing), a complete confirmation run is `confirmation` (not a search trial)."""
    done = df["state"] == "COMPLETE"
    state = df["state"].where(~(is_duplicate(df) & done), "reused")
    return state.where(~(is_confirmation(df) & done), "confirmation")


def state_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Trials per study and state (COMPLETE, PRUNED, FAIL, ...), with a total; reused results and complete
    confirmation runs have columns of their own (`shown_states`)."""
    state = shown_states(df)
    counts = pd.crosstab(df["study"], state) if not df.empty else pd.DataFrame()
    order = [*STATES[:1], "reused", "confirmation", *STATES[1:]]
    states = [s for s in order if s in counts] + [s for s in counts if s not in order]
    counts = counts.reindex(columns=states, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    # crosstab names its column axis "state": rendered, that name becomes a header cell over an empty column
    return counts.rename_axis(index="study", columns=None).reset_index()


def duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that reused a twin's result: study, number, and the trial whose result they carry."""
    rows = df[is_duplicate(df)]
    return pd.DataFrame(
        {"study": rows["study"], "number": rows["number"], "reused from": rows["duplicate_of"].astype(int)}
    ).reset_index(drop=True)


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


def memory_not_own(df: pd.DataFrame) -> pd.Series:
    """True for trials whose peak memory is the process's (`peak_memory_own` false): an upper bound, left out of
    every memory comparison."""
    own = df["peak_memory_own"] if "peak_memory_own" in df else pd.Series(None, index=df.index, dtype=object)
    return own.map(lambda v: v is False or v == 0 or str(v).lower() == "false").astype(bool)


def pareto_front(df: pd.DataFrame, cost: str) -> pd.DataFrame:
    """Complete trials with a known `cost`, flagged `pareto` on the front of objective vs cost, per task (peak
    memory: only trials that measured their own)."""
    done = complete(df).dropna(subset=[cost, "task"])
    if cost == "peak_memory_mb":
        done = done[~memory_not_own(done)]
    if done.empty:
        return done.assign(pareto=pd.Series(dtype=bool))
    flags = pd.Series(False, index=done.index)
    for _, group in done.groupby(TASK_KEYS):
        mask = pareto_mask(_score(group).to_numpy(float), group[cost].to_numpy(float))
        flags[group.index] = mask
    return done.assign(pareto=flags).sort_values([*TASK_KEYS, cost])


# the judge's figures per split; a study from before the split prefix holds them unprefixed (scored on the test prompts
# during the search: the leak that val_ names end)
JUDGE_FIGURES = ("judge_mean", "judge_std", "judge_n_scored", "judge_n_failed", "rouge_l")


def judge_split_columns(df: pd.DataFrame, split: str) -> dict[str, str]:
    """`judge_mean` -> the frame's column for `split` ("val_judge_mean", or the old unprefixed one for "val")."""
    out = {}
    for name in JUDGE_FIGURES:
        column = f"{split}_{name}"
        if column not in df and split == "val" and name in df and df[name].notna().any():
            column = name
        out[name] = column
    return out


def judge_table(df: pd.DataFrame) -> pd.DataFrame:
    """Alpaca search trials scored by the judge on the validation prompts: judge mean and std, ROUGE-L, parse
    failures, perplexity, whether the trial learned anything."""
    names = judge_split_columns(df, "val")
    columns = ["study", "number", *CONFIG_COLUMNS, *JUDGE_FIGURES, "val_perplexity", "learned"]
    scored = complete(df)
    if names["judge_mean"] not in scored:
        return pd.DataFrame(columns=columns)
    scored = scored[(scored["task"] == "alpaca") & scored[names["judge_mean"]].notna()]
    scored = scored.rename(columns={v: k for k, v in names.items() if v != k and v in scored})
    scored = scored.assign(learned=learned_text(scored)).reindex(columns=columns)
    return scored.sort_values("judge_mean", ascending=False).reset_index(drop=True)


def confirmed_judge_table(df: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per confirmed alpaca configuration: the test prompts' judge mean with its 95% interval over the seeds
    (`test_judge_mean` of the confirmation runs), next to the validation figure over the same runs."""
    from analysis.stats import mean_interval

    rows = []
    alpaca = runs[runs["task"] == "alpaca"] if "task" in runs else runs.iloc[0:0]
    for (study, number), group in alpaca.groupby(["study", "confirms"], sort=True):
        row: dict[str, object] = {"study": study, "confirms": int(number), "finetune": group["finetune"].iloc[0]}
        for split in ("val", "test"):
            column = f"{split}_judge_mean"
            values = pd.to_numeric(group[column], errors="coerce").dropna().tolist() if column in group else []
            interval = mean_interval(values)
            row[f"{split} judge"] = np.nan if not values else float(np.mean(values))
            row[f"{split} ±"] = interval.half_width if interval is not None else np.nan
            row[f"{split} n"] = len(values)
        rows.append(row)
    return pd.DataFrame(rows)


def _importances(study: optuna.Study, trials: list, params: list[str]) -> dict[str, float]:
    """PED-ANOVA importances (Optuna's default evaluator) of `params` over `trials` (a copy of the study's)."""
    view = optuna.create_study(directions=study.directions)
    view.add_trials(trials)
    target = None
    if len(study.directions) > 1:  # the evaluator ranks low targets as good: orient the first objective
        sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        target = lambda t: sign * t.values[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*computes the importances of params to achieve low")
        return optuna.importance.get_param_importances(view, params=params, target=target)


def _varied(trials: list, params: set[str]) -> list[str]:
    return sorted(p for p in params if len({repr(t.params.get(p)) for t in trials if p in t.params}) > 1)


def param_importances(study: optuna.Study) -> pd.DataFrame:
    """Importances of the swept params for the (first) objective, by Optuna's default evaluator (PED-ANOVA).

    Two groups, each summing to 1: every param but LoRA's over all complete search trials, and every param that
    varies among the LoRA trials over those trials only; LoRA-only params (`lora.*`) appear only in the second,
    since full fine-tuning ignores them and over all trials their importance would measure the mode. `over` says
    which trials. Reused duplicates and confirmation runs are left out.

    Raises:
        ValueError: fewer than two complete trials, or no param that varies among them.
    """
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "duplicate_of" not in t.user_attrs and t.user_attrs.get(PHASE_ATTR) != CONFIRM_PHASE
    ]
    if len(done) < 2:
        raise ValueError(f"importances need at least 2 complete trials, but got {len(done)}")
    names = {p for t in done for p in t.params}
    lora = [t for t in done if t.user_attrs.get("finetune", t.params.get("finetune")) == "lora"]
    shared = _varied(done, {p for p in names if not is_lora_only(p)})
    within_lora = _varied(lora, names - {"finetune"})
    if not any(is_lora_only(p) for p in within_lora):  # no LoRA knob varies: the first group says it all
        within_lora = []
    if not shared and not within_lora:
        raise ValueError("importances need a param that varies among the complete trials, but none does")
    rows = []
    if shared:
        over = f"all {len(done)} complete trials"
        rows += [(p, v, over) for p, v in _importances(study, done, shared).items()]
    if within_lora and len(lora) >= 2:
        over = f"the {len(lora)} LoRA trials"
        rows += [(p, v, over) for p, v in _importances(study, lora, within_lora).items()]
    return pd.DataFrame(rows, columns=["param", "importance", "over"])


def blank_not_applicable(rows: pd.DataFrame) -> pd.DataFrame:
    """LoRA-only knobs blanked ("") for trials that are not LoRA trials: they do not apply, they are not unknown."""
    if "finetune" not in rows:
        return rows
    shown = rows.astype(object)
    not_lora = rows["finetune"] != "lora"
    for column in [c for c in rows if is_lora_only(str(c))]:
        shown.loc[not_lora, column] = ""
    return shown


def with_trial(rows: pd.DataFrame) -> pd.DataFrame:
    """`study` and `number` folded into one `trial` column ("study#number"), first."""
    trial = trial_ids(rows)
    rest = rows.drop(columns=["study", "number"])
    return rest.assign(trial=trial)[["trial", *rest.columns]]
