"""Open a study storage and flatten its trials into one pandas DataFrame, one row per trial.

The frame keeps what Optuna knows (study, number, state, values, params, durations, intermediate values) and every
user attribute under its own name (the metrics.json names), so tables read `df["val_accuracy"]` directly.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from sqlalchemy.engine import make_url

from analysis.runs import add_run_columns
from analysis.schema import NOT_RUN_ATTR

logger = logging.getLogger(__name__)

# columns the frame itself defines; a user attribute with one of these names is kept as `user_attrs_<name>`
RESERVED = (
    "study",
    "number",
    "state",
    "value",
    "objective",
    "direction",
    "objectives",
    "directions",
    "datetime_start",
    "datetime_complete",
    "duration_s",
    "intermediate_values",
    "n_intermediate",
    "last_step",
)
# user attributes every report section reads; absent ones become empty columns so sections need no guards
EXPECTED = (
    "task",
    "model",
    "finetune",
    "lora_rank",
    "lora_method",
    "lora_targets",
    "freeze_blocks",
    "lr",
    "batch_size",
    "grad_accum",
    "epochs",
    "steps",
    "trainable_params",
    "trainable_pct",
    "total_params",
    "peak_memory_mb",
    "wall_time_s",
    "train_time_s",
    "tokens_per_s",
    "tokens_per_s_p10",
    "tokens_per_s_p90",
    "peak_memory_own",
    "learned",
    "flags",
    "fail_reason",
    "duplicate_of",
    "run_dir",
    # from the trial's record, else its run folder (analysis.runs); NaN when neither has it
    "epochs_trained",
    "baseline_value",
    "untouched_value",
    "n_layer",
)
SQLITE_HEADER = b"SQLite format 3\x00"


class ReportInputError(ValueError):
    """Bad storage URL or study name: the CLI prints it as one line."""


def redact(url: str) -> str:
    """The storage URL without its password, for messages and the report."""
    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: keep only the scheme
        return url.split("://", 1)[0] + "://..."


def _databases_near(folder: Path) -> str:
    found = sorted(p.name for p in folder.glob("*.db")) if folder.is_dir() else []
    return f"; SQLite files in {folder}: {', '.join(found)}" if found else f"; no .db files in {folder}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a database URL or a journal file, without creating a missing SQLite file."""
    if "://" not in url:
        path = Path(url)
        if not path.is_file():
            raise ReportInputError(
                "--storage must be a database URL (sqlite:///sweeps.db, postgresql+psycopg://user@host/db) or "
                f"an existing journal file, but got --storage={url}{_databases_near(path.parent)}"
            )
        with path.open("rb") as fh:
            if fh.read(16) == SQLITE_HEADER:
                url = f"sqlite:///{path}"
            else:
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:"):
        database = make_url(url).database
        if database and database != ":memory:" and not Path(database).is_file():
            raise ReportInputError(
                f"the SQLite file of --storage must exist, but got --storage={url} ({database} not found)"
                f"{_databases_near(Path(database).parent)}"
            )
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportInputError(
            f"--storage must be a reachable Optuna database, but got --storage={redact(url)} ({reason})"
        ) from exc


def load_studies(storage: optuna.storages.BaseStorage, names: list[str] | None = None) -> list[optuna.Study]:
    """The named studies (all when `names` is empty), checked against what the storage holds."""
    existing = optuna.get_all_study_names(storage)
    if not existing:
        raise ReportInputError("the storage must hold at least one study, but got none")
    missing = [name for name in names or [] if name not in existing]
    if missing:
        raise ReportInputError(f"--study must be one of {existing}, but got --study={missing[0]}")
    return [optuna.load_study(study_name=name, storage=storage) for name in names or existing]


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objective names: its metric names, else the trials' `objective_name`, else value_<i>."""
    n = len(study.directions)
    if study.metric_names and len(study.metric_names) == n:
        return list(study.metric_names)
    seen = Counter(
        json.dumps(t.user_attrs["objective_name"])
        for t in study.get_trials(deepcopy=False)
        if "objective_name" in t.user_attrs
    )
    if seen:
        names = json.loads(seen.most_common(1)[0][0])
        names = names if isinstance(names, list) else [names]
        if len(names) == n:
            return [str(x) for x in names]
    return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]


def _scalar(value: Any) -> Any:
    """Lists and dicts become JSON text so the frame stays flat (CSV and parquet)."""
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else value


def _trial_row(study: optuna.Study, names: list[str], directions: list[str], trial: Any) -> dict[str, Any]:
    values = trial.values or []
    row: dict[str, Any] = {
        "study": study.study_name,
        "number": trial.number,
        "state": trial.state.name,
        "value": values[0] if values else math.nan,
        "objective": names[0],
        "direction": directions[0],
        "objectives": ",".join(names),
        "directions": ",".join(directions),
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
        "duration_s": trial.duration.total_seconds() if trial.duration is not None else math.nan,
        "intermediate_values": json.dumps({str(k): v for k, v in sorted(trial.intermediate_values.items())}),
        "n_intermediate": len(trial.intermediate_values),
        "last_step": max(trial.intermediate_values) if trial.intermediate_values else math.nan,
    }
    for i in range(1, len(names)):
        row[f"value_{i}"] = values[i] if values else math.nan
    for name, value in trial.params.items():
        row[f"params_{name}"] = value
    for name, value in trial.user_attrs.items():
        row[f"user_attrs_{name}" if name in RESERVED else name] = _scalar(value)
    return row


def _fill_from_params(df: pd.DataFrame) -> pd.DataFrame:
    """Failed trials may lack user attributes: take task/finetune/model from params or the study's majority."""
    for attr, param in (("finetune", "params_finetune"), ("model", "params_model"), ("task", "params_task")):
        if param in df:
            df[attr] = df[attr].where(df[attr].notna(), df[param])
    for attr in ("task", "model"):
        majority = df.groupby("study")[attr].agg(lambda s: s.mode().iloc[0] if s.notna().any() else None)
        df[attr] = df[attr].where(df[attr].notna(), df["study"].map(majority))
    # the rank is ignored when every weight is trained: N/A, not a value to group by
    df.loc[df["finetune"] != "lora", [c for c in ("lora_rank", "lora_alpha") if c in df]] = math.nan
    return df


def trials_frame(studies: list[optuna.Study], read_runs: bool = True) -> pd.DataFrame:
    """One row per trial of all `studies`: state, values, params_*, user attributes, durations, intermediates.

    With `read_runs`, each trial's metrics.json (in its `run_dir`, when on this machine) adds what the study does not
    hold: epochs actually trained, the majority-class baseline, the model depth (`analysis.runs.add_run_columns`).
    """
    rows = []
    for study in studies:
        names = objective_names(study)
        directions = [d.name.lower() for d in study.directions]
        trials = [t for t in study.get_trials(deepcopy=False) if not t.system_attrs.get(NOT_RUN_ATTR)]
        rows += [_trial_row(study, names, directions, t) for t in trials]
    df = pd.DataFrame(rows, columns=list(RESERVED[:3])) if not rows else pd.DataFrame(rows)
    for column in (*RESERVED, *EXPECTED):
        if column not in df:
            df[column] = math.nan
    numeric = ("value", "lora_rank", "freeze_blocks", "lr", "trainable_params", "total_params", "steps", "duplicate_of")
    for column in numeric:
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df = _fill_from_params(df.astype({c: "object" for c in ("task", "model", "finetune")}))
    df = add_run_columns(df, read=read_runs)
    logger.info("loaded %d trials from %d studies", len(df), len(studies))
    return df


def intermediate_long(df: pd.DataFrame) -> pd.DataFrame:
    """The intermediate values as rows (study, number, state, step, value), for curves."""
    rows = [
        {"study": r.study, "number": r.number, "state": r.state, "step": int(step), "value": value}
        for r in df.itertuples()
        for step, value in json.loads(r.intermediate_values or "{}").items()
    ]
    return pd.DataFrame(rows, columns=["study", "number", "state", "step", "value"])


def export(df: pd.DataFrame, folder: Path) -> list[Path]:
    """Write the frame as trials.csv and trials.parquet; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    csv, parquet = folder / "trials.csv", folder / "trials.parquet"
    df.to_csv(csv, index=False)
    # parquet needs one type per column: mixed user attributes (a rank that is sometimes text) become text
    table = df.copy()
    for column in [c for c in table if pd.api.types.is_object_dtype(table[c])]:
        kinds = {type(v) for v in table[column].dropna()}
        if len(kinds) > 1:
            table[column] = table[column].map(lambda v: None if pd.isna(v) else str(v))
    table.to_parquet(parquet, index=False)
    return [csv, parquet]
