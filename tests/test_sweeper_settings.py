"""The sweeper's keys are checked when it is built (one rule, one error), and samplers/pruners built from them."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.samplers import GridSampler, NSGAIISampler, QMCSampler, RandomSampler

from sweeper import parse_search_space
from sweeper._config import PRUNERS, SAMPLERS, LorasweepSweeperConf
from sweeper._preflight import preflight, set_config_check
from sweeper._pruners import GroupedPruner, build_pruner
from sweeper._samplers import PerTrialSeedSampler, build_sampler
from sweeper._settings import build_settings, failures_allowed
from sweeper._storage import absolute_url, mask_url
from sweeper._sweeper import OptunaSweeper

ROOT = Path(__file__).resolve().parents[1]
TPE = {"_target_": "optuna.samplers.TPESampler", "seed": None}
NOP = {"_target_": "optuna.pruners.NopPruner"}


def settings(**overrides):
    raw = {"sampler": TPE, "pruner": NOP, "direction": "minimize", "storage": None, "n_trials": 4, "n_jobs": 1}
    raw.update({"max_failure_rate": 0.5, **overrides})
    return build_settings(**raw)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("direction", "up", "`direction` must be 'minimize', 'maximize' or a non-empty list of them, but got"),
        ("direction", [], "but got direction=[]"),
        ("objective", 3, "`objective` must be a name or a list of names, but got objective=3"),
        ("objective", ["a", "b"], "`objective` and `direction` must have the same length"),
        ("storage", "redis://h/0", "`storage` must be null, a database URL"),
        ("study_name", "  ", "`study_name` must be null or a non-empty string, but got study_name='  '"),
        ("n_trials", 0, "`n_trials` must be a positive integer, but got n_trials=0"),
        ("n_trials", True, "`n_trials` must be a positive integer, but got n_trials=True"),
        ("n_jobs", 1.5, "`n_jobs` must be a positive integer, but got n_jobs=1.5"),
        ("max_failure_rate", 1.5, "`max_failure_rate` must be between 0 and 1 inclusive, but got max_failure_rate=1.5"),
        ("params", [1, 2], "`params` must be a mapping of key to sweep"),
        ("search_space", {"x": {"type": "float"}}, "`search_space` was replaced by `params` in hydra-optuna-sweeper"),
        ("custom_search_space", "nodots", "`custom_search_space` must be the dotted path of a function"),
        ("sampler", {"seed": 1}, "`sampler` must be a config with a `_target_`"),
        ("n_trails", 5, "but got unknown keys ['n_trails'] (did you mean n_trials for n_trails?)"),
        ("heartbeat_interval", 0, "`heartbeat_interval` must be null or a positive integer (seconds), but got"),
        ("heartbeat_interval", 1.5, "but got heartbeat_interval=1.5"),
        ("grace_period", 60, "`grace_period` must be longer than `heartbeat_interval`"),
        ("grace_period", -1, "`grace_period` must be null or a positive integer (seconds), but got grace_period=-1"),
        ("max_retry", -1, "`max_retry` must be null (no limit) or a non-negative integer, but got max_retry=-1"),
        ("reconnect_timeout", "1m", "`reconnect_timeout` must be a non-negative number of seconds, but got"),
        ("extend_study", "yes", "`extend_study` must be true or false, but got extend_study='yes'"),
    ],
)
def test_each_key_is_checked_with_one_error_in_optunas_form(key, value, message):
    with pytest.raises(ValueError) as info:
        settings(**{key: value})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_heartbeat_settings_default_to_optunas_grace_period_and_can_be_turned_off():
    s = settings()
    assert (s.heartbeat_interval, s.grace_period, s.grace_s, s.max_retry) == (60, None, 120, 3)
    assert settings(heartbeat_interval=2, grace_period=5).grace_s == 5
    off = settings(heartbeat_interval=None)
    assert off.grace_s is None
    with pytest.raises(ValueError, match=r"`grace_period` needs heartbeats .* but got grace_period=5"):
        settings(heartbeat_interval=None, grace_period=5)


def test_a_password_in_a_bad_storage_url_is_not_echoed():
    with pytest.raises(ValueError) as info:
        settings(storage="redis://user:hunter2@host/0")
    assert "hunter2" not in str(info.value)
    assert mask_url("postgresql+psycopg://u:hunter2@db:5432/optuna") == "postgresql+psycopg://u:***@db:5432/optuna"


def test_relative_file_storages_are_made_absolute_so_jobs_that_chdir_find_them(tmp_path):
    assert absolute_url("sqlite:///sweeps.db", tmp_path) == f"sqlite:///{tmp_path / 'sweeps.db'}"
    assert absolute_url("journal:///j.log", tmp_path) == f"journal:///{tmp_path / 'j.log'}"
    assert absolute_url(f"sqlite:///{tmp_path}/a.db", "/elsewhere") == f"sqlite:///{tmp_path}/a.db"
    assert absolute_url("postgresql://h/db", tmp_path) == "postgresql://h/db"


def test_multi_objective_settings_and_failure_allowance():
    s = settings(direction=["maximize", "minimize"], objective=["accuracy", "trainable_params"], n_trials=10)
    assert s.multi_objective and s.metric_names == ["accuracy", "trainable_params"]
    assert failures_allowed(s) == 5
    assert failures_allowed(settings(max_failure_rate=0.0)) == 0


def test_every_sampler_and_pruner_config_has_a_target_optuna_knows():
    for node in [*SAMPLERS.values(), *PRUNERS.values()]:
        target = node()._target_
        module, name = target.rsplit(".", 1)
        if name != "MOTPESampler":
            assert hasattr(optuna.samplers if "samplers" in module else optuna.pruners, name), target
    conf = LorasweepSweeperConf()
    assert conf.direction == "${oc.select:direction,minimize}" and conf.max_failure_rate == 0.5


def test_motpe_is_an_error_naming_its_replacements_not_a_quiet_switch_to_tpe():
    spec = {"_target_": "optuna.samplers.MOTPESampler", "seed": None, "n_startup_trials": 5}
    with pytest.raises(ValueError, match=r"MOTPESampler was deprecated in Optuna 2.9 in favour of TPESampler") as info:
        build_sampler(spec, None)
    message = str(info.value)
    assert "but got hydra/sweeper/sampler=motpe" in message
    assert "hydra/sweeper/sampler=tpe" in message and "hydra/sweeper/sampler=nsgaii" in message


def test_unknown_sampler_argument_and_class_fail_when_the_sweeper_is_built():
    with pytest.raises(ValueError, match=r"Sampler arguments must be those of optuna.samplers._random.RandomSampler"):
        build_sampler({"_target_": "optuna.samplers.RandomSampler", "n_startup_trials": 3}, None)
    with pytest.raises(ValueError, match=r"`sampler._target_` must name an Optuna sampler class .* but got"):
        build_sampler({"_target_": "optuna.samplers.NoSuchSampler"}, None)
    with pytest.raises(ValueError, match=r"`pruner._target_` must be a subclass of BasePruner"):
        build_pruner({"_target_": "optuna.samplers.RandomSampler"}, False)
    with pytest.raises(ValueError, match=r"Percentile must be between 0 and 100"):
        OptunaSweeper(
            sampler=TPE,
            pruner={"_target_": "optuna.pruners.PercentilePruner", "percentile": 120.0},
            direction="minimize",
            n_trials=2,
            n_jobs=1,
            max_failure_rate=0.5,
        )


def test_grid_sampler_gets_the_whole_grid_and_its_size():
    space = parse_search_space(["lora.rank=4,8,16", "trainer.batch_size=range(8,16,8)"])
    sampler, n_grid = build_sampler({"_target_": "optuna.samplers.GridSampler", "seed": None}, space)
    assert isinstance(sampler, GridSampler) and n_grid == 6


def test_pruning_is_off_for_multi_objective_studies(caplog):
    median = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1}
    assert isinstance(build_pruner(median, False), optuna.pruners.MedianPruner)
    with caplog.at_level(logging.WARNING):
        assert isinstance(build_pruner(median, True), optuna.pruners.NopPruner)
    assert "Optuna cannot prune multi-objective studies" in caplog.text


def _first_params(sampler, n=4, seed_study=None):
    study = optuna.create_study(sampler=sampler)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1), "c": optuna.distributions.CategoricalDistribution("abc")}
    out = []
    for _ in range(n):
        trial = study.ask(dist)
        out.append(tuple(trial.params.values()))
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("target", ["optuna.samplers.TPESampler", "optuna.samplers.RandomSampler"])
def test_a_fixed_seed_is_reproducible_but_never_replays_within_a_study(target):
    spec = {"_target_": target, "seed": 7}
    first, _ = build_sampler(spec, None)
    again, _ = build_sampler(spec, None)
    assert isinstance(first, PerTrialSeedSampler)
    run = _first_params(first)
    assert run == _first_params(again), "a fresh study with the same seed gives the same points"
    assert len(set(run)) == len(run), "no two trials share a point"
    # a plain seeded sampler in two workers would draw the same first point; here trial numbers differ
    plain = [_first_params(RandomSampler(seed=7), n=1)[0] for _ in range(2)]
    assert plain[0] == plain[1]


def test_qmc_and_nsgaii_keep_their_classes():
    qmc, _ = build_sampler({"_target_": "optuna.samplers.QMCSampler", "seed": 3}, None)
    assert isinstance(qmc, QMCSampler), "QMC splits one sequence among workers: same seed everywhere"
    nsga, _ = build_sampler({"_target_": "optuna.samplers.NSGAIISampler", "seed": 3, "population_size": 4}, None)
    assert isinstance(nsga, PerTrialSeedSampler) and "NSGAIISampler" in repr(nsga)
    assert isinstance(nsga._current, NSGAIISampler)


def test_every_sampler_and_pruner_builds_from_its_defaults_without_deprecated_arguments():
    space = parse_search_space(["x=0,1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, node in SAMPLERS.items():
            if name != "motpe":
                build_sampler({**asdict(node()), "seed": 3}, space)
        for node in PRUNERS.values():
            build_pruner(asdict(node()), multi_objective=False)


def test_the_lora_vs_full_search_space_composes_and_builds(compose_cfg):
    cfg = compose_cfg("hparams_search=lora_vs_full")
    sweeper_cfg = {k: v for k, v in cfg.hydra.sweeper.items() if k not in ("_target_", "_recursive_")}
    built = OptunaSweeper(**sweeper_cfg)
    assert built.settings.directions == ["maximize"] and built.settings.metric_names == ["accuracy"]
    assert built.settings.study_name == "sms_spam-small-lora_vs_full"
    space = parse_search_space([f"{k}={v}" for k, v in built.settings.params.items()])
    assert space.distributions["finetune"].choices == ("full", "lora")
    assert space.distributions["optim.lr"].log
    first_lines = (ROOT / "conf" / "hparams_search" / "lora_vs_full.yaml").read_text().splitlines()[:6]
    assert any("python sweep.py hparams_search=lora_vs_full" in line for line in first_lines)


@pytest.mark.parametrize(
    ("launcher", "target", "keys"),
    [
        ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 3}),
        (
            "slurm",
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
            {"array_parallelism": 3, "timeout_min": 120, "gpus_per_node": 1, "cpus_per_task": 8},
        ),
    ],
)
def test_the_launcher_examples_compose_and_follow_the_sweepers_n_jobs(compose_cfg, launcher, target, keys):
    """No SLURM here: composing the config is as far as the submitit example can be checked."""
    from omegaconf import OmegaConf

    cfg = compose_cfg(f"hydra/launcher={launcher}", "hydra.sweeper.n_jobs=3")
    node = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert node["_target_"] == target
    assert keys.items() <= node.items()


@pytest.mark.parametrize(
    ("target", "extra", "module"),
    [
        ("optuna.samplers.CmaEsSampler", {"n_startup_trials": 2}, "cmaes"),
        ("optuna.samplers.GPSampler", {"n_startup_trials": 2}, "scipy"),
        ("optuna.samplers.QMCSampler", {}, "scipy"),
    ],
)
def test_samplers_with_optional_packages_sample_and_name_the_package_when_missing(target, extra, module, monkeypatch):
    spec = {"_target_": target, "seed": 1, **extra}
    study = optuna.create_study(sampler=build_sampler(spec, None)[0])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1), "y": optuna.distributions.FloatDistribution(0, 1)}
    for _ in range(4):  # past the startup trials, so the sampler's own model (and package) draws the last ones
        trial = study.ask(dist)
        study.tell(trial, trial.params["x"] + trial.params["y"])
    assert len({tuple(t.params.values()) for t in study.trials}) == 4

    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the package imports
    with pytest.raises(ValueError, match=rf"lorasweep\[samplers\].*no module named '{module}'"):
        build_sampler(spec, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"_target_": "optuna.pruners.MedianPruner", "group_by": "model"},
            r"list of parameter names, but got group_by='model'",
        ),
        (
            {"_target_": "optuna.pruners.HyperbandPruner", "group_by": ["model"]},
            r"median and percentile pruners, but got HyperbandPruner with group_by=\['model'\]",
        ),
    ],
)
def test_pruner_group_by_is_checked_when_the_sweeper_is_built(spec, message):
    with pytest.raises(ValueError, match=message):
        build_pruner(spec, multi_objective=False)


def test_a_grouped_pruner_waits_for_startup_trials_in_each_group():
    pruner = build_pruner(
        {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1, "group_by": ["finetune"]}, False
    )
    study = optuna.create_study(pruner=pruner)
    mode = optuna.distributions.CategoricalDistribution(["full", "lora"])

    def run(finetune: str, loss: float) -> bool:
        study.enqueue_trial({"finetune": finetune})
        trial = study.ask({"finetune": mode})
        trial.report(loss, 1)
        pruned = bool(trial.should_prune())
        study.tell(trial, loss)
        return pruned

    assert run("full", 0.1) is False
    assert run("lora", 0.9) is False, "the first LoRA trial has no LoRA trial to be compared with (not full's 0.1)"
    assert run("lora", 1.0) is True, "then a LoRA trial worse than the LoRA median stops"


@pytest.mark.parametrize(
    "choice",
    ["hparams_search=lora_vs_full"]
    + [f"experiment={p.stem}" for p in sorted((ROOT / "conf" / "experiment").glob("*_report.yaml"))],
)
def test_shipped_searches_prune_only_within_each_swept_model_and_mode(choice, compose_cfg):
    cfg = compose_cfg(choice)
    sweeper_cfg = {k: v for k, v in cfg.hydra.sweeper.items() if k not in ("_target_", "_recursive_")}
    settings = OptunaSweeper(**sweeper_cfg).settings
    pruner = build_pruner(settings.pruner, settings.multi_objective)
    swept = {k for k in ("model", "finetune") if k in (settings.params or {})}
    assert isinstance(pruner, GroupedPruner) and swept <= set(pruner.keys), (swept, pruner)


def _as_config(overrides: list[str]):
    """A stand-in for Hydra's composition in the preflight tests: the overrides as a config, plus a hydra node."""
    return OmegaConf.from_dotlist([*overrides, "hydra.job.name=app"])


def _positive_a_and_b(cfg) -> None:
    assert "hydra" not in cfg, "the check sees the job's config"
    problems = [f"`{k} > 0` must hold, but got {k}={cfg[k]}" for k in ("a", "b") if k in cfg and cfg[k] <= 0]
    if problems:
        raise ValueError("; ".join(problems))


@pytest.mark.parametrize(
    ("args", "blamed"),
    [
        (["a=4,0"], "a=0: `a > 0` must hold, but got a=0"),
        (["a=0,4"], "a=0: `a > 0` must hold, but got a=0"),  # the first value: the others pass
        (["a=range(-2,3)"], "a=-2: `a > 0` must hold, but got a=-2"),  # the ends of a range
        (["b=-1", "a=1,2"], "b=-1 a=1: `b > 0` must hold, but got b=-1"),  # a fixed value: every probe fails
    ],
)
def test_preflight_names_the_swept_value_the_apps_check_refuses(args, blamed):
    space = parse_search_space(args)
    with pytest.raises(ValueError) as info:
        preflight(space, _as_config, _positive_a_and_b, "app.check")
    message = str(info.value)
    assert message.startswith("Every swept value must pass the app's config check (app.check)")
    assert f"but got {blamed}." in message and "\n" not in message


def test_preflight_passes_good_values_and_names_overrides_that_do_not_compose():
    preflight(parse_search_space(["a=1,2", "b=range(1,3)"]), _as_config, _positive_a_and_b, "app.check")

    def compose(overrides):
        if "a=2" in overrides:
            raise ValueError("Could not override 'a'")
        return _as_config(overrides)

    with pytest.raises(ValueError, match=r"must compose with the app's config, but got a=2: Could not override 'a'"):
        preflight(parse_search_space(["a=1,2"]), compose, None, None)


def test_the_registered_check_is_used_unless_hydra_sweeper_check_names_one():
    def app_check(cfg) -> None:
        """An app's check, registered as sweep.py registers its own."""

    raw = {"sampler": TPE, "pruner": NOP, "direction": "minimize", "storage": None, "n_trials": 2, "n_jobs": 1}
    raw["max_failure_rate"] = 0.5
    set_config_check(app_check)
    try:
        assert OptunaSweeper(**raw).check is app_check
        named = OptunaSweeper(**raw, check="os.path.exists")
        assert named.check is os.path.exists and named.check_name == "hydra.sweeper.check=os.path.exists"
        with pytest.raises(ValueError, match=r"`check` must be the dotted path of an importable function \(cfg\)"):
            OptunaSweeper(**raw, check="nowhere.check")
    finally:
        set_config_check(None)
    assert OptunaSweeper(**raw).check is None
