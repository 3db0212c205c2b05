"""The job's side of a pack (`hydra.sweeper.pack.size > 1`): which trials it trains, their configs, their outcomes.

The sweeper asks Optuna for every member, as for any trial (same sampler, budget, heartbeats), and hands them to the
pack's job through the study, which the job reaches as a trial handle does (`sweeper._trial`):

- sweeper → job: a member is a RUNNING trial with system attributes `lorasweep:pack` = the pack's id (its leader's
  trial number, also the job's `LORASWEEP_PACK`) and `lorasweep:overrides` = its task overrides. The job composes
  its config from them with Hydra's config loader, exactly as the launcher composes a job's (`load_sweep_config`
  on the job's own Hydra config), and trains it in the folder a trial of that number would get.
- job → sweeper: when a member leaves the pack, the job writes its outcome (state, values, reason, run folder) as
  system attribute `lorasweep:pack_outcome`; the sweeper tells Optuna (its sampler's `after_trial` runs) and, while
  the budget allows, asks a new member for the free place.
- sweeper → job: study system attribute `lorasweep:pack_closed:<id>` once no member will be added; the job ends
  when it holds no member and the pack is closed.

This module imports no model code: `tasks.train.pack.sweep` is the app's side of it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict

from sweeper._optuna_private import study_id, study_storage, trial_id_of_number
from sweeper._storage import with_retries
from sweeper._trial import ENV_STUDY, _hydra_sweeper_config, _load_study, _reconnect_timeout

log = logging.getLogger(__name__)

ENV_PACK = "LORASWEEP_PACK"
PACK_ATTR = "lorasweep:pack"
OVERRIDES_ATTR = "lorasweep:overrides"
OUTCOME_ATTR = "lorasweep:pack_outcome"
CLOSED_ATTR = "lorasweep:pack_closed:{}"
MAX_TRACEBACK = 20_000
# Hydra's config loader is not made for two threads: an in-process (basic launcher) job composes its members while
# the sweeper composes new trials in a thread of its own
COMPOSE_LOCK = threading.Lock()

PackKey = Callable[[DictConfig], "str | None"]
_registered: tuple[PackKey, Callable[[DictConfig], str | None]] | None = None


def set_pack_key(key: PackKey | None, why_alone: Callable[[DictConfig], str | None] | None = None) -> None:
    """Register the app's rule for packing: `key(cfg)` is equal for trials that can train in one pack (None: the
    trial runs alone) and `why_alone(cfg)` says why not, in one line. sweep.py registers `tasks.train.pack`'s."""
    global _registered
    _registered = (key, why_alone or (lambda cfg: None)) if key is not None else None


def registered_pack_key() -> tuple[PackKey, Callable[[DictConfig], str | None]] | None:
    return _registered


def task_overrides(overrides: list[str]) -> list[str]:
    """A trial's overrides without the ones that tell a job its trial (the study name, the environment)."""
    return [o for o in overrides if not o.startswith(("hydra.sweeper.study_name=", "++hydra.job.env_set."))]


class PackChannel:
    """The study as a pack's job sees it: new members, whether more may come, where outcomes go."""

    def __init__(self, study: optuna.Study, pack_id: int, size: int, timeout_s: float) -> None:
        self.study, self.pack_id, self.size, self._timeout_s = study, pack_id, size, timeout_s
        self._seen: set[int] = set()

    def _retried(self, action: Callable[[], Any], what: str) -> Any:
        return with_retries(action, f"pack {self.pack_id}: {what}", timeout_s=self._timeout_s)

    @property
    def study_name(self) -> str:
        return self.study.study_name

    def new_members(self) -> list[tuple[int, list[str]]]:
        """(trial number, task overrides) of members assigned since the last call, by trial number."""
        running = self._retried(
            lambda: self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)), "reading members"
        )
        new = [
            (t.number, list(t.system_attrs.get(OVERRIDES_ATTR) or []))
            for t in running
            if t.system_attrs.get(PACK_ATTR) == self.pack_id and t.number not in self._seen
        ]
        self._seen.update(n for n, _ in new)
        return sorted(new)

    def closed(self) -> bool:
        """Whether the sweeper will add no more members."""
        storage = study_storage(self.study)
        attrs = self._retried(lambda: storage.get_study_system_attrs(study_id(self.study)), "reading the pack's state")
        return bool(attrs.get(CLOSED_ATTR.format(self.pack_id)))

    def report(self, number: int, outcome: dict[str, Any]) -> None:
        """Hand a member's outcome to the sweeper (it tells Optuna)."""
        if outcome.get("traceback") and len(outcome["traceback"]) > MAX_TRACEBACK:
            outcome = {**outcome, "traceback": "..." + outcome["traceback"][-MAX_TRACEBACK:]}
        storage = study_storage(self.study)
        tid = self._retried(lambda: trial_id_of_number(self.study, number), f"finding trial {number}")
        self._retried(lambda: storage.set_trial_system_attr(tid, OUTCOME_ATTR, outcome), f"reporting trial {number}")


def current_pack() -> PackChannel | None:
    """The pack this job trains (from `LORASWEEP_PACK`), or None for a job of one trial."""
    pack_id, study_name = os.environ.get(ENV_PACK), os.environ.get(ENV_STUDY)
    if not pack_id or not study_name:
        return None
    loaded = _load_study(study_name)
    if loaded is None:
        raise ValueError(
            f"a pack's job must reach its study to find its trials, but study {study_name!r} cannot be reached "
            "from this process (storage=null keeps it in the sweeper's process: set hydra.sweeper.storage)"
        )
    study, sweeper_cfg = loaded
    size = int(OmegaConf.select(sweeper_cfg, "pack.size", default=1) or 1) if sweeper_cfg is not None else 1
    return PackChannel(study, int(pack_id), size, _reconnect_timeout(sweeper_cfg))


def compose_member(overrides: list[str], number: int) -> tuple[DictConfig, Path]:
    """A member's job config (no `hydra` node, as a launched job gets it) and its run folder, composed from its
    task overrides on this job's own Hydra config, as the launcher composes a job."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    if not GlobalHydra.instance().is_initialized() or _hydra_sweeper_config() is None:
        raise ValueError(
            "a pack's job composes its members' configs with Hydra's config loader, but this process has none "
            "(use the basic, joblib or submitit launcher)"
        )
    master = OmegaConf.create({"hydra": OmegaConf.to_container(HydraConfig.get(), resolve=False)})
    with COMPOSE_LOCK:
        cfg = GlobalHydra.instance().config_loader().load_sweep_config(master, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.num = number
        cfg.hydra.job.id = str(number)
    run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    from sweeper._preflight import job_view

    job = job_view(cfg)
    saved = run_dir / str(cfg.hydra.output_subdir or ".hydra")  # as Hydra saves a launched job's
    saved.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(job, saved / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), saved / "overrides.yaml")
    return job, run_dir
