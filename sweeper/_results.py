"""The end of a sweep: best trial (or Pareto front) printed and written to optimization_results.yaml."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from sweeper._budget import is_not_run
from sweeper._phase import is_confirmation, search_trials
from sweeper._storage import JOURNAL_PREFIX, mask_url, url_scheme

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _solution(trial: FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "params": dict(trial.params), "values": [_plain(v) for v in trial.values]}


def state_counts(study: optuna.Study, confirmation: bool = False) -> dict[str, int]:
    """Trials per state: the search's, or (`confirmation`) the confirmation runs'; trials closed unrun left out."""
    trials = [t for t in study.get_trials(deepcopy=False) if not is_not_run(t) and is_confirmation(t) == confirmation]
    counts = Counter(t.state.name for t in trials)
    return {state.name: counts[state.name] for state in TrialState if counts[state.name]}


def summarize(
    study: optuna.Study,
    storage_url: str | None,
    n_trials: int,
    fixed: dict[str, Any],
    confirmed: list[dict[str, Any]] | None = None,
    unused_of: Callable[[FrozenTrial], list[str]] | None = None,
) -> dict[str, Any]:
    """What optimization_results.yaml holds: the study, its trial counts, and its best result(s), all of the
    search (a confirmation run with a lucky seed is not the best trial); then the confirmed configurations.
    `unused_of(trial)` names the params a trial ignored (lora.* under full fine-tuning): `unused_params`."""
    results: dict[str, Any] = {
        "name": "lorasweep",
        "study_name": study.study_name,
        "storage": mask_url(storage_url),
        "directions": [d.name.lower() for d in study.directions],
        "metric_names": study.metric_names,
        "n_trials": n_trials,
        "trials": state_counts(study),
        "fixed_params": fixed,
    }
    complete = search_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if len(study.directions) == 1:
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        best = min(complete, key=lambda t: (sign * t.value, t.number)) if complete else None  # ties: the earliest
        results["best_trial"] = best.number if best else None
        results["best_params"] = dict(best.params) if best else None
        results["best_value"] = _plain(best.value) if best else None
        if best is not None and unused_of is not None:
            results["unused_params"] = unused_of(best)
    else:
        results["solutions"] = [_solution(t) for t in _pareto(study, complete)]
    if confirmed is not None:
        results["confirmation_runs"] = state_counts(study, confirmation=True)
        results["confirmed"] = confirmed
    return results


def _pareto(study: optuna.Study, complete: list[FrozenTrial]) -> list[FrozenTrial]:
    """The study's Pareto front among its search trials."""
    front = {t.number for t in study.best_trials} if complete else set()
    return [t for t in complete if t.number in front]


def write_results(results: dict[str, Any], sweep_dir: Path) -> Path:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / RESULTS_FILE
    path.write_text(yaml.safe_dump(results, sort_keys=False, allow_unicode=True))
    return path


def cli_target(storage_url: str) -> str:
    """The storage as optuna-dashboard and analysis.report take it: RDB URLs as they are, journal files as a path."""
    if url_scheme(storage_url) == "journal":
        return storage_url[len(JOURNAL_PREFIX) :]
    return mask_url(storage_url)


def runnable(program: Path, launch_dir: str | os.PathLike[str]) -> str:
    """A program path as the user can type it where they launched the sweep: relative when inside that folder
    (`.venv/bin/python`), else absolute; never resolved (a venv's python is a link to the system one)."""
    path, base = os.path.abspath(program), os.path.abspath(launch_dir)
    shown = os.path.relpath(path, base) if path.startswith(base + os.sep) else path
    return shlex.quote(shown)


def look_commands(storage_url: str, study_name: str, launch_dir: str | os.PathLike[str]) -> list[str]:
    """The dashboard and the report for this study, run by the interpreter (and its environment) of this sweep."""
    target = shlex.quote(cli_target(storage_url))
    python = Path(sys.executable) if sys.executable else None
    dashboard = python.parent / "optuna-dashboard" if python is not None else None
    shown_dashboard = runnable(dashboard, launch_dir) if dashboard is not None and dashboard.exists() else None
    shown_python = runnable(python, launch_dir) if python is not None else "python"
    return [
        f"{shown_dashboard or 'optuna-dashboard'} {target}",
        f"{shown_python} -m analysis.report --storage {target} --study {shlex.quote(study_name)}",
    ]


def report(results: dict[str, Any], path: Path, storage_url: str | None, launch_dir: str) -> None:
    """Log the best result(s), where they were written, and the two commands to look at the study."""
    counts = ", ".join(f"{n} {state}" for state, n in results["trials"].items()) or "no trials"
    log.info("Study %r: %s.", results["study_name"], counts)
    if "confirmation_runs" in results:
        runs = ", ".join(f"{n} {state}" for state, n in results["confirmation_runs"].items()) or "none"
        log.info("Confirmation runs: %s.", runs)
    if "solutions" in results:
        log.info("Pareto front: %d trial(s).", len(results["solutions"]))
        for s in results["solutions"]:
            log.info("    trial %d: values=%s params=%s", s["number"], s["values"], s["params"])
    elif results["best_trial"] is None:
        log.warning("No trial completed: there is no best value yet.")
    else:
        log.info("Best value: %s (trial %d)", results["best_value"], results["best_trial"])
        unused = results.get("unused_params") or []
        used = {k: v for k, v in results["best_params"].items() if k not in unused}
        note = ", ".join(f"{k}={results['best_params'][k]}" for k in unused)
        log.info("Best parameters: %s%s", used, f" (not used by this trial: {note})" if note else "")
    for row in results.get("confirmed") or []:
        seeds = ", ".join(f"{s}: {'—' if v is None else f'{v:.6g}'}" for s, v in row["values"].items())
        log.info("Confirmed trial %d (search %.6g): seeds %s", row["trial"], row["search_value"], seeds)
    log.info("Results written to %s", path)
    if storage_url is None:
        log.info("The study was kept in memory (storage=null): nothing else remains of it.")
        return
    target = cli_target(storage_url)
    hidden = " (password hidden: use the real URL)" if target != storage_url and "***" in target else ""
    log.info("Look at it:%s", hidden)
    for command in look_commands(storage_url, results["study_name"], launch_dir):
        log.info("    %s", command)
