"""Hydra config nodes: the sweeper (`hydra/sweeper: lorasweep`) and its `sampler` and `pruner` groups.

The keys are hydra-optuna-sweeper's, so a config written for that plugin carries over. This module imports no
Optuna: Hydra imports it at every start (plugin discovery) to register the nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SWEEPER_TARGET = "hydra_plugins.lorasweep_sweeper.lorasweep_sweeper.LorasweepSweeper"


# samplers: only `_target_`, `seed` and non-deprecated arguments; None means Optuna's own default.
# Any other argument of the Optuna class can be added: +hydra.sweeper.sampler.n_ei_candidates=48
@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    multivariate: bool | None = None
    group: bool = False
    # with n_jobs > 1: penalise running trials so parallel workers do not all try the same point
    constant_liar: bool | None = None


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GridSamplerConf:
    # the grid is built at run time from the search space (`params` and the command line)
    _target_: str = "optuna.samplers.GridSampler"
    seed: int | None = None


@dataclass
class CmaEsSamplerConf:
    # needs `pip install cmaes`
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    sigma0: float | None = None
    n_startup_trials: int = 1
    use_separable_cma: bool = False
    with_margin: bool = False


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class GPSamplerConf:
    # needs `pip install scipy`
    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class QMCSamplerConf:
    # needs `pip install scipy`; every worker must share the seed (the sequence is split, not replayed)
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class MOTPESamplerConf:
    # removed from Optuna (4.0): kept so that selecting it gets one line naming its replacements (tpe, nsgaii)
    _target_: str = "optuna.samplers.MOTPESampler"
    seed: int | None = None
    n_startup_trials: int = 10


# pruners: a job rebuilds the same pruner from this config to answer should_prune()
@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # trials that finish before any pruning
    n_warmup_steps: int = 0  # steps of each trial before it can be pruned
    interval_steps: int = 1
    n_min_trials: int = 1
    # compare a trial only with trials that share these parameters, e.g. [model, finetune] (ours, not Optuna's)
    group_by: list[str] | None = None


@dataclass
class PercentilePrunerConf:
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1
    group_by: list[str] | None = None


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class WilcoxonPrunerConf:
    _target_: str = "optuna.pruners.WilcoxonPruner"
    p_threshold: float = 0.1
    n_startup_steps: int = 2


# after the search: the best `top_k` configurations of each group are trained again with `seeds` fresh seeds
# (sweeper/_confirm.py), in the same study, as trials with user attribute phase=confirm
@dataclass
class ConfirmConf:
    seeds: int = 0  # confirmation runs per chosen configuration; 0: no confirmation phase
    top_k: int = 1  # configurations confirmed per group
    # a group: the trials sharing these keys' values (a config group's option, else the key's value); a key that
    # does not apply to a trial (lora.* under full fine-tuning, by the app's rule) has no value there
    group_by: list[str] = field(default_factory=lambda: ["task", "model", "finetune", "lora.rank"])
    seed_base: int = 1000  # confirmation seeds: seed_base, seed_base + 1, ... (a trial's own search seed skipped)


@dataclass
class PackConf:
    # trials trained together in one job over one shared base model (tasks.train.pack); 1 = each trial alone
    size: int = 1


@dataclass
class ThresholdPrunerConf:
    # prunes a trial whose reported value is NaN or falls outside [lower, upper] (e.g. a diverging loss), whatever
    # the other trials did; the defaults prune NaN only
    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: float | None = None
    upper: float | None = math.inf
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class LorasweepSweeperConf:
    _target_: str = SWEEPER_TARGET
    # samplers and pruners are built by the sweeper (grid space, seeds per trial), not by Hydra
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])

    sampler: Any = MISSING  # hydra/sweeper/sampler: tpe | random | grid | cmaes | nsgaii | gp | qmc
    pruner: Any = MISSING  # hydra/sweeper/pruner: none | median | percentile | successive_halving | ...
    # minimize | maximize, or a list of them (multi-objective); the app's top-level `direction` if it has one
    direction: Any = "${oc.select:direction,minimize}"
    # name(s) of what the job returns (the study's metric names); the app's top-level `objective` if any
    objective: Any = "${oc.select:objective,null}"
    # database URL (sqlite, postgresql, mysql) or journal:///<file>; null keeps the study in memory
    # relative SQLite/journal paths are made absolute against the launch directory when the sweeper starts
    storage: str | None = "sqlite:///sweeps.db"
    study_name: str | None = None  # null: from the app's task, model and fine-tuning mode
    # a study remembers its fixed overrides and search space; a run with others is refused unless this is true
    # (then its trials are added to the study, and its settings become the study's)
    extend_study: bool = False
    n_trials: int = 20  # the study's total budget (COMPLETE + PRUNED + RUNNING), shared by all workers
    n_jobs: int = 1  # trials in flight at once (needs a launcher that runs jobs apart, e.g. joblib)
    max_failure_rate: float = 0.5  # stop after more than this fraction of n_trials has failed
    params: dict[str, Any] | None = None  # search space in the override grammar: {lora.rank: 4,8,16}
    search_space: dict[str, Any] | None = None  # removed in hydra-optuna-sweeper 1.2: use params
    custom_search_space: str | None = None  # "module.function(cfg, trial)" that suggests more params
    # "module.function(cfg)" that checks a trial's composed config, raising ValueError (one line) to refuse it:
    # called for every swept value before the first trial; null: the check the app registered with
    # sweeper.set_config_check (lorasweep's sweep.py registers sweep.check_trial_config)
    check: str | None = None
    # several workers on one study (README "Scaling out"); RDB storages only (sqlite, postgresql, mysql).
    # each running trial sends a heartbeat every heartbeat_interval s (null: off); a trial silent for grace_period s
    # (null: 2 x heartbeat_interval) is failed by any live worker and its parameters run again, at most max_retry times
    heartbeat_interval: int | None = 60
    grace_period: int | None = None
    max_retry: int | None = 3
    reconnect_timeout: float = 120  # seconds a lost database connection is retried (backoff) before a worker stops
    confirm: ConfirmConf = field(default_factory=ConfirmConf)
    # packed trials (docs/sweeps.md): up to pack.size LoRA trials that can share a base train in one job
    pack: PackConf = field(default_factory=PackConf)


SAMPLERS: dict[str, type] = {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "grid": GridSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "nsgaii": NSGAIISamplerConf,
    "gp": GPSamplerConf,
    "qmc": QMCSamplerConf,
    "motpe": MOTPESamplerConf,
}

PRUNERS: dict[str, type] = {
    "none": NopPrunerConf,
    "median": MedianPrunerConf,
    "percentile": PercentilePrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
    "hyperband": HyperbandPrunerConf,
    "wilcoxon": WilcoxonPrunerConf,
    "threshold": ThresholdPrunerConf,
}


def register_configs() -> None:
    """Store the sweeper and its groups in Hydra's ConfigStore (called by the hydra_plugins shim)."""
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="lorasweep", node=LorasweepSweeperConf, provider="lorasweep")
    for name, node in SAMPLERS.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="lorasweep")
    for name, node in PRUNERS.items():
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="lorasweep")
