"""The Hydra side of the sweeper: from `hydra.sweeper.*` and the command line to a running Optuna study."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import SQLAlchemyError

from sweeper._budget import Budget
from sweeper._confirm import SEED_KEY, confirm_overrides, unused_keys
from sweeper._confirm_phase import ConfirmPhase
from sweeper._finite import DistinctPointSampler, FiniteSpace
from sweeper._grammar import SearchSpace, describe, format_value, parse_search_space
from sweeper._heartbeat import Heartbeat, RetryStaleTrial, quiet_heartbeat_warnings
from sweeper._loop import TrialLoop
from sweeper._optuna_private import study_storage, trial_id
from sweeper._pack import Packer, check_packing, probe_overrides
from sweeper._phase import SearchOnlySampler, confirmation_of
from sweeper._preflight import job_view, preflight, preflight_confirmation, registered_check
from sweeper._pruners import GROUP_ATTR, GROUP_BY, GroupedPruner, build_pruner, group_values, pruner_name
from sweeper._recorded import TRIAL_FIXED_ATTR, check_or_record
from sweeper._results import report, summarize, write_results
from sweeper._samplers import build_sampler, sampler_class, sampler_name
from sweeper._settings import Settings, SweepError, build_settings, failures_allowed
from sweeper._storage import (
    HeartbeatSettings,
    absolute_url,
    first_line,
    mask_url,
    open_storage,
    open_study,
    url_scheme,
)
from sweeper._trial import ENV_STUDY, ENV_TRIAL, register_local_study

log = logging.getLogger(__name__)

# parts of the default study name: (config group, key that names the chosen option)
NAME_PARTS = (("task", "task.name"), ("model", "model.name"), ("finetune", "finetune.mode"))


class OptunaSweeper:
    def __init__(self, **raw: Any) -> None:
        self.settings: Settings = build_settings(**raw)
        build_sampler(self.settings.sampler, None)  # bad sampler or pruner arguments fail here, before any work
        build_pruner(self.settings.pruner, self.settings.multi_objective, quiet=True)
        self.custom_search_space = _function("custom_search_space", self.settings.custom_search_space, "(cfg, trial)")
        # the app's check of each swept value: hydra.sweeper.check, else the one it registered (sweep.py does)
        self.check, self.check_name = registered_check() or (None, None)
        if self.settings.check:
            self.check = _function("check", self.settings.check, "(cfg)")
            self.check_name = f"hydra.sweeper.check={self.settings.check}"
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self.pruner: optuna.pruners.BasePruner | None = None
        self.packer: Packer | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        try:
            study, space, budget, storage_url, n_workers = self._open(arguments)
        except ValueError as e:  # bad input: one line, before any trial runs
            raise SweepError(str(e)) from None
        s = self.settings
        phase = self._confirm_phase(study, space, storage_url, n_workers) if s.confirm.enabled else None
        loop = self._search(study, space, budget, storage_url, n_workers)
        while phase is not None and loop.stop_reason is None and phase.search_waits():
            loop = self._search(study, space, budget, storage_url, n_workers)  # a dead worker's trial, queued again
        if budget.exhausted(study) and budget.finite is not None and budget.finite.n_points < budget.requested:
            assert budget.finite is not None
            log.info(
                "All %d points of the search space (%s) have run, each once: the sweep stops short of n_trials=%d.",
                budget.finite.n_points,
                budget.finite.describe(),
                budget.requested,
            )
        confirmed = phase.run() if phase is not None and loop.stop_reason is None else None

        unused_of = lambda t: unused_keys(self._compose(t, space, study.study_name), t.params)
        results = summarize(study, storage_url, budget.n_trials, space.recorded(), confirmed, unused_of)
        path = write_results(results, Path(str(self.config.hydra.sweep.dir)))
        report(results, path, storage_url, str(self.config.hydra.runtime.cwd))
        if phase is not None and phase.loop is not None and phase.loop.stop_reason is not None:
            loop = phase.loop
        if loop.stop_reason is not None and loop.failures > loop.failures_allowed:
            assert loop.last_failure is not None
            number, reason = loop.last_failure
            last = " ".join(reason.split())
            total = getattr(loop.source, "total", 0)
            what = f"{total} confirmation runs" if loop.source is not None else f"n_trials={budget.in_effect}"
            raise SweepError(
                f"The sweep stopped early: {loop.stop_reason} (max_failure_rate={s.max_failure_rate}, "
                f"{what}). Last failure, trial {number}: {last[:500]} "
                f"(each trial's reason is its fail_reason in study {study.study_name!r})."
            )

    def _search(
        self, study: optuna.Study, space: SearchSpace, budget: Budget, storage_url: str | None, n_workers: int
    ) -> TrialLoop:
        s = self.settings
        loop = TrialLoop(
            study=study,
            budget=budget,
            distributions=space.distributions,
            prepare=lambda trial: self._prepare(trial, space, study.study_name),
            launch=self._launch,
            n_workers=n_workers,
            failures_allowed=failures_allowed(s, budget.in_effect),
            heartbeat=Heartbeat(study, s.grace_s or 0),
            reconnect_timeout=s.reconnect_timeout,
            storage_name=mask_url(storage_url),
        )
        loop.packer = self.packer  # search trials only: confirmation runs run alone
        loop.run()
        return loop

    def _confirm_phase(
        self, study: optuna.Study, space: SearchSpace, storage_url: str | None, n_workers: int
    ) -> ConfirmPhase:
        name = study.study_name
        return ConfirmPhase(
            study=study,
            settings=self.settings,
            space=space,
            compose=lambda trial: self._compose(trial, space, name),
            prepare=lambda trial: self._prepare(trial, space, name),
            launch=self._launch,
            n_workers=n_workers,
            storage_name=mask_url(storage_url),
        )

    def _open(self, arguments: list[str]) -> tuple[optuna.Study, SearchSpace, Budget, str | None, int]:
        """Parse and check the search space, then create or load the study: everything before the first trial."""
        assert self.config is not None and self.hydra_context is not None
        s = self.settings
        params = [f"{key}={_param_text(value)}" for key, value in s.params.items()]
        is_grid = sampler_class(s.sampler) is optuna.samplers.GridSampler
        space = parse_search_space(params + list(arguments), self.hydra_context.config_loader, grid=is_grid)
        sampler, n_grid = build_sampler(s.sampler, space)
        if n_grid is not None and self.custom_search_space is not None:
            raise ValueError(
                "The grid sampler needs every parameter in its grid, but got "
                f"custom_search_space={s.custom_search_space!r}; use another sampler or list the values in params."
            )
        study_name = s.study_name or default_study_name(self.config, space)
        self._set_study_name(study_name)
        self._preflight(space, study_name)
        storage_url = absolute_url(s.storage, str(self.config.hydra.runtime.cwd))
        self.packer = self._packer(space, study_name, storage_url)  # packing (sweeper/_pack.py)
        pruner = self.pruner = build_pruner(s.pruner, s.multi_objective)
        try:
            storage = open_storage(storage_url, heartbeat=heartbeat_settings(s), timeout_s=s.reconnect_timeout)
            study = open_study(storage, study_name, s.directions, sampler, pruner, s.metric_names)
        except (SQLAlchemyError, StorageInternalError) as e:
            raise ValueError(
                f"The study's storage must be a database this worker can open, but got storage={mask_url(storage_url)} "
                f"({first_line(e)})."
            ) from None
        check_or_record(study, space, extend=s.extend_study, grid=n_grid is not None)
        if storage_url is None:
            register_local_study(study)
        plain = n_grid is None and self.custom_search_space is None
        finite = FiniteSpace.of(space, space.recorded()) if plain else None
        if finite is not None:
            sampler = study.sampler = DistinctPointSampler(study.sampler, finite, s.sampler.get("seed"))
        sampler = study.sampler = SearchOnlySampler(study.sampler)  # blind to confirmation runs (sweeper._phase)
        budget = Budget(s.n_trials, space.grid() if n_grid is not None else None, finite)
        n_workers = 1 if isinstance(self.launcher, BasicLauncher) else s.n_jobs
        self._log_start(study, storage_url, space, budget, sampler, pruner, n_workers)
        self._check_pruner_groups(space, pruner)
        return study, space, budget, storage_url, n_workers

    def _prepare(self, trial: optuna.Trial, space: SearchSpace, study_name: str) -> list[str]:
        """Record the fixed values, run custom_search_space, and build the job's overrides (a confirmation run's:
        its search trial's, with the confirmation seed and phase)."""
        for name, value in space.recorded().items():
            trial.set_user_attr(name, value)
        study_storage(trial.study).set_trial_system_attr(trial_id(trial), TRIAL_FIXED_ATTR, space.recorded())
        names = self.settings.metric_names
        if names:
            trial.set_user_attr("objective_name", names[0] if len(names) == 1 else names)
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        overlap = sorted(set(trial.params) & set(space.fixed))
        if overlap:
            raise ValueError(f"custom_search_space must not suggest fixed keys, but got {overlap}.")
        task_overrides = space.overrides(_values(trial.params, space))
        sampled = task_overrides[len(space.fixed) :]  # the fixed ones were listed when the sweep started
        confirms = confirmation_of(study_storage(trial.study).get_trial(trial_id(trial)))
        if confirms is not None:
            number, seed = confirms
            log.info("trial %d: confirmation run of trial %d with %s=%d", trial.number, number, SEED_KEY, seed)
            return confirm_overrides(task_overrides, *confirms) + _trial_identity(study_name, trial.number)
        log.info("trial %d: %s", trial.number, " ".join(sampled) or "(no searched parameters)")
        overrides = task_overrides + _trial_identity(study_name, trial.number)
        self._record_group(trial, overrides)
        return overrides

    def _record_group(self, trial: optuna.Trial, overrides: list[str]) -> None:
        """Record the trial's values of the pruner's group_by keys, read from its composed config (as the job
        will see it), for GroupedPruner: a key nobody set on the command line still has its config value."""
        keys = self.pruner.keys if isinstance(self.pruner, GroupedPruner) else []
        if not keys:
            return
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        study_storage(trial.study).set_trial_system_attr(trial_id(trial), GROUP_ATTR, group_values(config, keys))

    def _compose(self, trial: optuna.trial.FrozenTrial, space: SearchSpace, study_name: str) -> DictConfig:
        """A search trial's composed config, as its job saw it."""
        assert self.config is not None and self.hydra_context is not None
        overrides = space.overrides(_values(trial.params, space)) + _trial_identity(study_name, trial.number)
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def _launch(self, overrides: list[str], number: int) -> JobReturn:
        # the trial number is the job number: trial folders are trial_<number>, unique across workers
        return self.launcher.launch([overrides], initial_job_idx=number)[0]

    def _set_study_name(self, name: str) -> None:
        """Fix the study name in the sweeper's config, so that hydra.sweep.dir (which may use it) resolves."""
        assert self.config is not None
        with read_write(self.config.hydra.sweeper), open_dict(self.config.hydra.sweeper):
            self.config.hydra.sweeper.study_name = name

    def _preflight(self, space: SearchSpace, study_name: str) -> None:
        """Compose (and check, with hydra.sweeper.check) a trial config per swept value, before any trial."""
        assert self.config is not None and self.hydra_context is not None
        loader, config = self.hydra_context.config_loader, self.config
        compose = lambda overrides: loader.load_sweep_config(config, overrides + _trial_identity(study_name, 0))
        preflight(space, compose, self.check, self.check_name)
        confirm = self.settings.confirm
        if confirm.enabled:
            preflight_confirmation(space, compose, self.check, confirm_overrides([], 0, confirm.seed_base))

    def _packer(self, space: SearchSpace, study_name: str, storage_url: str | None) -> Packer | None:
        """With pack.size > 1: refuse what cannot pack (one line), else how trials are keyed for packs."""
        size = self.settings.pack_size
        if size <= 1:
            return None
        assert self.config is not None and self.hydra_context is not None
        loader, config = self.hydra_context.config_loader, self.config
        compose = lambda overrides: job_view(loader.load_sweep_config(config, overrides))
        probes = [compose(o + _trial_identity(study_name, 0)) for o in probe_overrides(space)]
        key = check_packing(size, self.launcher, storage_url, probes)
        assert key is not None
        log.info("Packing: up to %d trials that can share a base model train together in one job (pack.size)", size)
        sampler = self.settings.sampler
        if sampler["_target_"].endswith("TPESampler") and not sampler.get("constant_liar"):
            log.info("    TPE proposes alike points for trials in flight together: constant_liar=true spreads them")
        return Packer(size, lambda overrides: key(compose(overrides)))

    @staticmethod
    def _check_pruner_groups(space: SearchSpace, pruner: optuna.pruners.BasePruner) -> None:
        """Warn when pruning compares trials that differ in what the study compares (mode, model size)."""
        if isinstance(pruner, optuna.pruners.NopPruner):
            return
        keys = pruner.keys if isinstance(pruner, GroupedPruner) else []
        across = [k for k in ("model", "finetune") if k in space.params and k not in keys]
        if across:
            log.warning(
                "The pruner compares trials across %s: LoRA and small-model trials are then stopped for learning "
                "slower than full fine-tuning or bigger models. Set hydra.sweeper.pruner.%s=[%s] to compare "
                "within each.",
                " and ".join(across),
                GROUP_BY,
                ",".join(keys + across),
            )

    def _log_start(
        self,
        study: optuna.Study,
        storage_url: str | None,
        space: SearchSpace,
        budget: Budget,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
        n_workers: int,
    ) -> None:
        s = self.settings
        used = budget.used(study)
        log.info(
            "Study %r in %s: %s, %s, direction %s",
            study.study_name,
            mask_url(storage_url),
            sampler_name(sampler),
            pruner_name(pruner),
            "/".join(s.directions),
        )
        for name, param in space.params.items():
            log.info("    %s: %s", name, describe(param.distribution))
        for fixed in space.fixed.values():
            log.info("    %s (fixed)", f"{fixed.name}=***" if fixed.secret else fixed.override)
        grid = f" (grid of {budget.n_grid} points)" if budget.n_grid is not None else ""
        if budget.finite is not None and budget.finite.n_points <= budget.requested:
            grid = f" ({budget.finite.n_points} points in the search space: each runs once)"
        log.info(
            "Budget: n_trials=%d%s, %d already in the study, %d to run, %d at a time",
            budget.requested,
            grid,
            used,
            max(budget.left(study), 0),
            n_workers,
        )
        if s.heartbeat_interval is None:
            log.info("Heartbeats off (heartbeat_interval=null): a killed worker's trial stays RUNNING")
        elif storage_url is None or url_scheme(storage_url) == "journal":
            log.info(
                "Heartbeats need a database storage (sqlite, postgresql, mysql): a killed worker's trial stays "
                "RUNNING in %s",
                "memory" if storage_url is None else "a journal file",
            )
        else:
            log.info(
                "Heartbeat every %d s; a trial silent for %d s is failed and run again (max_retry=%s)",
                s.heartbeat_interval,
                s.grace_s,
                s.max_retry,
            )
        if n_workers < s.n_jobs:
            log.info("n_jobs=%d needs a launcher that runs jobs apart (hydra/launcher=joblib)", s.n_jobs)


def heartbeat_settings(settings: Settings) -> HeartbeatSettings | None:
    """The storage's heartbeat settings, with the retry of stale trials; None when heartbeats are off."""
    if settings.heartbeat_interval is None or settings.grace_s is None:
        return None
    quiet_heartbeat_warnings()
    retry = RetryStaleTrial(settings.max_retry, settings.grace_s, settings.reconnect_timeout)
    return HeartbeatSettings(settings.heartbeat_interval, settings.grace_s, retry)


def _values(params: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """A trial's values in the search space's order, then any custom_search_space ones."""
    values = {name: params[name] for name in space.params}
    values.update({k: v for k, v in params.items() if k not in values})
    return values


def _trial_identity(study_name: str, number: int) -> list[str]:
    """Hydra overrides that tell a job its trial: the environment (keeping override_dirname clean) and the
    study name, which the job's hydra.sweep.dir may use."""
    return [
        f"hydra.sweeper.study_name={format_value(study_name)}",
        f"++hydra.job.env_set.{ENV_STUDY}={format_value(study_name)}",
        f"++hydra.job.env_set.{ENV_TRIAL}={number}",
    ]


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return format_value(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def _function(key: str, path: str | None, signature: str) -> Any:
    """The function a `hydra.sweeper` key names by dotted path (None when unset)."""
    if not path:
        return None
    try:
        return get_method(path)
    except Exception as e:
        raise ValueError(
            f"`{key}` must be the dotted path of an importable function {signature} -> None, but got {key}={path!r} "
            f"({' '.join(str(e).split())[:300]})."
        ) from None


def default_study_name(config: DictConfig, space: SearchSpace) -> str:
    """`<task>-<model>-<finetune>` from the app's config (`sms_spam-small-lora`); a swept group shows its
    choices joined by `+` (`sms_spam-small+medium-lora`); the job name when the app has none of these."""
    parts = []
    for group, key in NAME_PARTS:
        param = space.params.get(group)
        if param is not None and hasattr(param.distribution, "choices"):
            parts.append("+".join(str(c) for c in param.distribution.choices))
        elif group in space.fixed:
            parts.append(str(space.fixed[group].value))
        else:
            value = OmegaConf.select(config, key, default=None)
            if value is not None:
                parts.append(str(value))
    return "-".join(parts) or str(config.hydra.job.name)
