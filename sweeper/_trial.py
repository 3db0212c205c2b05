"""The job's side of a trial: find it from the environment, report, ask whether to prune, attach metrics.

The sweeper passes the study name and trial number through `hydra.job.env_set` (so `override_dirname` and the
user's config stay clean); the storage and the pruner come from the job's own `hydra.sweeper` config, which is
composed exactly as the sweeper's, so the pruner is rebuilt identically and no URL (or password) is copied around.
Each write is retried while the database connection is lost (for `hydra.sweeper.reconnect_timeout` seconds), so
a database restart does not fail a trial that is training.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import optuna

from sweeper._optuna_private import trial_id, trial_id_of_number
from sweeper._phase import SearchOnlyPruner
from sweeper._pruners import build_pruner
from sweeper._storage import DEFAULT_RECONNECT_TIMEOUT_S, absolute_url, open_storage, with_retries

log = logging.getLogger(__name__)

ENV_STUDY = "LORASWEEP_STUDY_NAME"
ENV_TRIAL = "LORASWEEP_TRIAL_NUMBER"
ENV_STORAGE = "LORASWEEP_STORAGE"  # only for jobs run outside Hydra; a Hydra job reads hydra.sweeper.storage

T = TypeVar("T")
_SCALARS = (bool, int, float, str, type(None))
_lock = threading.Lock()
_storages: dict[str, optuna.storages.BaseStorage] = {}
_local_studies: dict[str, optuna.Study] = {}  # storage=null: the study lives in the sweeper's process
_handles: dict[tuple[str, int], TrialHandle] = {}


class TrialHandle:
    """The running Optuna trial as a training loop sees it.

    Single-objective studies get intermediate values and pruning; multi-objective ones cannot be pruned by
    Optuna, so there `report` is ignored and `should_prune` is always False.
    """

    def __init__(self, trial: optuna.Trial, reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT_S) -> None:
        self._trial = trial
        self.multi_objective = len(trial.study.directions) > 1
        self._timeout_s = reconnect_timeout

    def _retried(self, action: Callable[[], T], what: str) -> T:
        return with_retries(action, f"trial {self.number}: {what}", timeout_s=self._timeout_s)

    @property
    def number(self) -> int:
        return self._trial.number

    @property
    def study_name(self) -> str:
        return self._trial.study.study_name

    def report(self, value: float, step: int) -> None:
        """Record the objective at a training step (an intermediate value, shown as a curve in the dashboard)."""
        if not self.multi_objective:
            self._retried(lambda: self._trial.report(float(value), int(step)), f"reporting step {step}")

    def should_prune(self) -> bool:
        """Ask the study's pruner whether this trial should stop (then raise optuna.TrialPruned)."""
        return False if self.multi_objective else self._retried(self._trial.should_prune, "asking the pruner")

    def set_user_attr(self, key: str, value: Any) -> None:
        self._retried(lambda: self._trial.set_user_attr(key, value), f"setting {key}")

    def find_complete(self, attr: str, value: Any) -> optuna.trial.FrozenTrial | None:
        """The first COMPLETE trial of this study whose user attribute `attr` equals `value`, or None.

        Lets a job notice that an equivalent trial already finished (e.g. a grid that crosses `finetune=full` with
        LoRA ranks the full trials ignore) and reuse its result instead of training again.
        """
        done = self._trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return next((t for t in done if t.number != self.number and t.user_attrs.get(attr) == value), None)

    def set_metrics(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Store metrics.json's scalars as user attributes and its validation curve as intermediate values.

        Returns the attributes written. Steps already reported during training are not written twice.
        """
        attrs = user_attrs_from_metrics(metrics)
        for key, value in attrs.items():
            self.set_user_attr(key, value)
        if not self.multi_objective:
            stored = self._retried(lambda: self._trial.storage.get_trial(trial_id(self._trial)), "reading the trial")
            for step, value in curve_values(metrics).items():
                if step not in stored.intermediate_values:
                    self.report(value, step)
        return attrs

    def __repr__(self) -> str:
        return f"TrialHandle(study={self.study_name!r}, number={self.number})"


def _plain_scalar(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            value = value.item()
        except (TypeError, ValueError):
            return None
    return value if isinstance(value, _SCALARS) else None


def user_attrs_from_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Every scalar of metrics.json's top level, `summary` and `metrics`, under its own name (no prefixes),
    plus `objective_name` (a name, or a list for multi-objective)."""
    attrs: dict[str, Any] = {}
    for section in (metrics, metrics.get("summary") or {}, metrics.get("metrics") or {}):
        if not isinstance(section, Mapping):
            continue
        for key, value in section.items():
            scalar = _plain_scalar(value)
            if scalar is not None or value is None:
                attrs[str(key)] = scalar
    objective = metrics.get("objective")
    if isinstance(objective, Mapping) and objective.get("name") is not None:
        name = objective["name"]
        attrs["objective_name"] = list(name) if isinstance(name, (list, tuple)) else name
    return attrs


def curve_values(metrics: Mapping[str, Any]) -> dict[int, float]:
    """The objective at each step of metrics.json's `val_curve` (single objective only)."""
    objective = metrics.get("objective")
    if not isinstance(objective, Mapping) or isinstance(objective.get("name"), (list, tuple)):
        return {}
    candidates = [objective.get("key"), objective.get("name")]
    key = objective.get("key")
    if isinstance(key, str) and key.startswith("val_"):
        candidates.append(key[len("val_") :])
    out: dict[int, float] = {}
    for point in metrics.get("val_curve") or []:
        if not isinstance(point, Mapping) or "step" not in point:
            continue
        for name in candidates:
            value = _plain_scalar(point.get(name)) if name else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[int(point["step"])] = float(value)
                break
    return out


def register_local_study(study: optuna.Study) -> None:
    """Let in-process jobs (basic launcher) find a study kept in memory (storage=null)."""
    _local_studies[study.study_name] = study


def _hydra_sweeper_config() -> tuple[Any, str] | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.sweeper, str(hydra_cfg.runtime.cwd)


def _load_study(study_name: str) -> tuple[optuna.Study, Any] | None:
    found = _hydra_sweeper_config()
    sweeper_cfg = found[0] if found else None
    if sweeper_cfg is not None and "storage" in sweeper_cfg:
        url = absolute_url(sweeper_cfg.storage, found[1])
    else:
        url = os.environ.get(ENV_STORAGE)
    if url is None:
        study = _local_studies.get(study_name)
        if study is None:
            log.warning(
                "Trial of study %r runs without a reachable study: storage=null keeps it in the sweeper's "
                "memory, which a job in another process cannot see. Intermediate values and pruning are off.",
                study_name,
            )
        return (study, sweeper_cfg) if study else None
    timeout_s = _reconnect_timeout(sweeper_cfg)
    with _lock:
        if url not in _storages:
            _storages[url] = open_storage(url, timeout_s=timeout_s)
        storage = _storages[url]
    # a RandomSampler: building a Trial calls the sampler, and the job must not touch the study's sampler state;
    # no pruning unless the job's hydra.sweeper.pruner says so (Optuna's default would be MedianPruner)
    study = with_retries(
        lambda: optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=optuna.pruners.NopPruner(),
        ),
        f"loading study {study_name!r}",
        timeout_s=timeout_s,
    )
    return study, sweeper_cfg


def _reconnect_timeout(sweeper_cfg: Any) -> float:
    value = sweeper_cfg.get("reconnect_timeout") if sweeper_cfg is not None else None
    return float(value) if value is not None else DEFAULT_RECONNECT_TIMEOUT_S


def current_trial() -> TrialHandle | None:
    """The trial this job runs for, or None outside a sweep (a plain `python sweep.py` run)."""
    study_name, number = os.environ.get(ENV_STUDY), os.environ.get(ENV_TRIAL)
    if not study_name or number is None:
        return None
    key = (study_name, int(number))
    if key not in _handles:
        handle = _open_handle(study_name, int(number))
        if handle is None:
            return None
        _handles.clear()  # one trial per job: drop the previous job's handle in a reused worker
        _handles[key] = handle
    return _handles[key]


def trial_handle(study_name: str, number: int) -> TrialHandle | None:
    """A handle of trial `number` of the study, found as `current_trial` finds the job's own; a packed job runs
    several trials at once (`tasks.train.pack`). None when the study cannot be reached."""
    return _open_handle(study_name, number)


def _open_handle(study_name: str, number: int) -> TrialHandle | None:
    loaded = _load_study(study_name)
    if loaded is None:
        return None
    study, sweeper_cfg = loaded
    if sweeper_cfg is not None and sweeper_cfg.get("pruner") is not None:
        from omegaconf import OmegaConf

        spec = OmegaConf.to_container(sweeper_cfg.pruner, resolve=True)
        pruner = build_pruner(spec, len(study.directions) > 1, quiet=True)
        # search trials are compared with search trials; a confirmation run is never pruned
        study.pruner = pruner if isinstance(pruner, optuna.pruners.NopPruner) else SearchOnlyPruner(pruner)
    timeout_s = _reconnect_timeout(sweeper_cfg)
    trial_id = with_retries(
        lambda: trial_id_of_number(study, number),
        f"finding trial {number}",
        timeout_s=timeout_s,
    )
    return TrialHandle(optuna.Trial(study, trial_id), reconnect_timeout=timeout_s)
