"""Real `-m` sweeps of a toy app (tests/apps/quadratic.py, sweep.py's contract) on a real SQLite study.

Each test runs `python tests/apps/quadratic.py -m ...` as a user would and then opens the study with Optuna.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "quadratic.py"
STUDY = "toy-small-lora"  # the default name: task, model and fine-tuning mode of the app's config

pytestmark = pytest.mark.slow


def app_command(tmp_path: Path, *args: str, storage: str | None = None) -> list[str]:
    storage = storage or f"sqlite:///{tmp_path / 'study.db'}"
    return [
        sys.executable, str(APP), "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.sweeper.storage={storage}",
        *args,
    ]  # fmt: skip


def app_env(pythonpath: Path = ROOT) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(pythonpath)}


def run_app(tmp_path: Path, *args: str, check: bool = True, storage: str | None = None, **kwargs):
    proc = subprocess.run(
        app_command(tmp_path, *args, storage=storage),
        cwd=tmp_path,
        env=kwargs.pop("env", app_env()),
        capture_output=True,
        text=True,
        timeout=180,
        **kwargs,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"sweep exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def load(tmp_path: Path, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.trials]


def test_the_grammar_yields_log_float_categorical_and_stepped_int_distributions(tmp_path):
    proc = run_app(
        tmp_path,
        "optim.lr=tag(log, interval(1e-5,1e-3))", "lora.rank=4,8,16", "trainer.batch_size=range(4,16,4)",
        "model=medium", "hydra.sweeper.n_trials=3", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1",
    )  # fmt: skip
    study = load(tmp_path, "toy-medium-lora")
    assert states(study) == ["COMPLETE"] * 3
    for trial in study.trials:
        assert trial.distributions == {
            "optim.lr": FloatDistribution(1e-5, 1e-3, log=True),
            "lora.rank": CategoricalDistribution([4, 8, 16]),
            "trainer.batch_size": IntDistribution(4, 16, step=4),
        }
        assert trial.user_attrs["model"] == "medium", "a fixed override is recorded"
        config = yaml.safe_load((Path(trial.user_attrs["run_dir"]) / ".hydra" / "config.yaml").read_text())
        assert config["optim"]["lr"] == trial.params["optim.lr"] and config["lora"]["rank"] == trial.params["lora.rank"]
        assert config["trainer"]["batch_size"] == trial.params["trainer.batch_size"]
        # the trial's identity travels in the environment, not in the job's overrides
        overrides = yaml.safe_load((Path(trial.user_attrs["run_dir"]) / ".hydra" / "overrides.yaml").read_text())
        assert not any("LORASWEEP" in o or "study_name" in o for o in overrides)
        assert Path(trial.user_attrs["run_dir"]).name == f"trial_{trial.number}"
    assert study.metric_names == ["loss"]
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_value"] == study.best_value and results["best_params"] == study.best_params
    assert results["fixed_params"] == {"model": "medium"}
    db = tmp_path / "study.db"
    assert f"optuna-dashboard sqlite:///{db}" in proc.stdout
    assert f"python -m analysis.report --storage sqlite:///{db} --study toy-medium-lora" in proc.stdout


def test_the_best_parameters_say_which_ones_the_best_trial_did_not_use(tmp_path):
    # full fine-tuning ignores LoRA's settings (the app's set_inactive_keys): lora.rank=16 is not part of the answer
    proc = run_app(tmp_path, "finetune.mode=full", "lora.rank=4,16", "x=0,1", "hydra/sweeper/sampler=grid")
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_params"]["x"] == 1 and "lora.rank" in results["best_params"]  # Optuna's params, whole
    assert results["unused_params"] == ["lora.rank"]
    (line,) = [ln for ln in proc.stdout.splitlines() if "Best parameters" in ln]
    assert line.endswith(
        f"Best parameters: {{'x': 1}} (not used by this trial: lora.rank={results['best_params']['lora.rank']})"
    )


def test_median_pruner_prunes_and_keeps_intermediate_values_even_when_jobs_chdir(tmp_path):
    # a relative storage URL and jobs that change directory: the job still finds the study
    run_app(
        tmp_path,
        "x=-2,-1,0,1,2,3", "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=2", "hydra.job.chdir=true",
        storage="sqlite:///study.db",
    )  # fmt: skip
    study = load(tmp_path)
    assert len(study.trials) == 6
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, states(study)
    for trial in pruned:
        assert trial.intermediate_values, "a pruned trial keeps what it reported"
        assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]
        assert len(trial.intermediate_values) < 4, "it stopped before its last step"
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in complete)


def test_a_failing_trial_is_fail_with_its_reason_and_the_others_complete(tmp_path):
    run_app(tmp_path, "x=0,1,2,3", "nan_above=2.5", "hydra/sweeper/sampler=grid")
    study = load(tmp_path)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params == {"x": 3}
    assert failed[0].user_attrs["fail_reason"] == "NonFiniteLossError: loss is nan at step 1"
    assert sorted(t.params["x"] for t in study.trials if t.state == TrialState.COMPLETE) == [0, 1, 2]


def test_too_many_failures_stop_the_sweep_with_a_clear_error(tmp_path):
    proc = run_app(
        tmp_path, "x=interval(1,2)", "nan_above=0", "hydra.sweeper.n_trials=4", "hydra.sweeper.max_failure_rate=0.25",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "The sweep stopped early: 2 trials failed, more than max_failure_rate x n_trials = 1" in proc.stderr
    assert "Last failure, trial 1: NonFiniteLossError: loss is nan at step 1" in proc.stderr, "as the plugin does"
    assert (proc.stdout + proc.stderr).count("Traceback (most recent call last)") == 1, "one per distinct failure"
    assert states(load(tmp_path)) == ["FAIL", "FAIL"]
    assert (tmp_path / "sweep" / "optimization_results.yaml").exists()


def test_resume_tops_up_to_n_trials_instead_of_running_n_trials_more(tmp_path):
    args = ["x=interval(-2.0,2.0)", "hydra.sweeper.n_trials=3", "hydra/sweeper/sampler=tpe"]
    args.append("hydra.sweeper.sampler.seed=5")
    run_app(tmp_path, *args)
    first = [t.params for t in load(tmp_path).trials]
    proc = run_app(tmp_path, *args)
    assert "3 already in the study, 0 to run" in proc.stdout
    assert len(load(tmp_path).trials) == 3
    run_app(tmp_path, *(a.replace("n_trials=3", "n_trials=5") for a in args))
    study = load(tmp_path)
    assert states(study) == ["COMPLETE"] * 5
    resumed = [t.params for t in study.trials[3:]]
    assert not any(p in first for p in resumed), "a fixed seed does not replay the first run's points"


def test_two_sweep_processes_on_one_study_share_the_budget_exactly(tmp_path):
    command = app_command(tmp_path, "x=interval(-2.0,2.0)", "y=0,1", "hydra.sweeper.n_trials=6", "sleep_s=0.05")
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    procs = [subprocess.Popen(command, cwd=tmp_path, env=app_env(), **pipes) for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = load(tmp_path)
    run = [t for t in study.trials if not t.system_attrs.get("lorasweep:not_run")]
    assert len(run) == 6 and all(t.state == TrialState.COMPLETE for t in run)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert all(t.state == TrialState.FAIL for t in study.trials if t not in run), "only races leave not-run trials"
    assert sum("trial" in line and "COMPLETE" in line for out in outputs for line in out.splitlines()) == 6


def test_n_jobs_2_with_joblib_completes_the_budget_without_a_batch_barrier(tmp_path):
    run_app(
        tmp_path, "x=interval(-2.0,2.0)", "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2", "slow_trial=0", "slow_s=6", "hydra/sweeper/pruner=median",
    )  # fmt: skip
    study = load(tmp_path)
    assert states(study) == ["COMPLETE"] * 5
    assert all(t.intermediate_values and t.user_attrs["val_loss"] == t.value for t in study.trials)
    slow = study.trials[0]
    # while the slow trial ran, the other slot finished a trial and started another one at once
    during = [t for t in study.trials[1:] if t.datetime_complete < slow.datetime_complete]
    assert len(during) >= 2, [(t.number, t.datetime_start, t.datetime_complete) for t in study.trials]


def test_a_killed_worker_fails_its_trial_and_the_sweep_goes_on(tmp_path):
    run_app(tmp_path, "x=0,1,2", "kill_above=1.5", "hydra/sweeper/sampler=grid", "hydra/launcher=joblib")
    study = load(tmp_path)
    killed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and killed[0].params == {"x": 2}
    assert killed[0].user_attrs["fail_reason"].startswith("the launcher failed before the job returned")
    assert sorted(t.params["x"] for t in study.trials if t.state == TrialState.COMPLETE) == [0, 1]


def test_multi_objective_sweeps_write_the_pareto_front_and_do_not_prune(tmp_path):
    run_app(
        tmp_path, "x=-1,0,1,2", "model=small,medium", "objective=[loss,trainable_params]",
        "direction=[minimize,minimize]", "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
    )  # fmt: skip
    study = load(tmp_path, "toy-small+medium-lora")
    assert len(study.trials) == 8 and states(study) == ["COMPLETE"] * 8
    assert study.metric_names == ["loss", "trainable_params"]
    assert all(t.user_attrs["objective_name"] == ["loss", "trainable_params"] for t in study.trials)
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    front = {(s["params"]["x"], s["params"]["model"]) for s in results["solutions"]}
    assert front == {(t.params["x"], t.params["model"]) for t in study.best_trials}
    assert (1, "small") in front


def test_custom_search_space_adds_conditional_params_that_reach_the_job(tmp_path):
    run_app(
        tmp_path, "x=-1,1", "hydra.sweeper.n_trials=4", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.custom_search_space=quadratic.suggest_y",
    )  # fmt: skip
    study = load(tmp_path)
    assert {t.params["x"] for t in study.trials} == {-1, 1}
    for trial in study.trials:
        assert ("y" in trial.params) == (trial.params["x"] > 0)
        assert trial.user_attrs["y"] == trial.params.get("y", 0), "the job ran with the suggested y"


def test_a_resumed_study_with_another_direction_is_refused_and_left_untouched(tmp_path):
    run_app(tmp_path, "x=0,1", "hydra/sweeper/sampler=grid")
    proc = run_app(tmp_path, "x=0,1", "hydra/sweeper/sampler=grid", "direction=maximize", check=False)
    assert proc.returncode != 0
    assert "but got direction=['maximize'] for study 'toy-small-lora' stored with ['minimize']" in proc.stderr
    assert states(load(tmp_path)) == ["COMPLETE", "COMPLETE"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lora.rnak=4,8"], "Every trial's overrides must compose with the app's config, but got lora.rnak=4"),
        (["model=small,large"], "but got model=large"),
        (["hydra.sweeper.n_trials=0"], "`n_trials` must be a positive integer, but got n_trials=0"),
        (["x=interval(0.0,1.0)", "hydra/sweeper/sampler=grid"], "The grid sampler needs discrete values"),
    ],
)
def test_bad_input_fails_before_any_trial_runs(tmp_path, args, message):
    proc = run_app(tmp_path, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "sweep").exists()
    if (tmp_path / "study.db").exists():
        assert all(not s.n_trials for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'study.db'}"))


@pytest.mark.parametrize("lost_in", ["INSERT INTO trial_params", "SELECT"])
def test_a_database_lost_in_the_middle_of_an_ask_goes_on_with_the_trial_the_ask_created(tmp_path, lost_in):
    """The connection drops after an ask created trial 1 and before the trial was handed out (CI saw it as a
    PostgreSQL restart): the retry goes on with trial 1. Asking again left trial 1 RUNNING for ever, without a
    heartbeat, holding a place of the budget: 3 trials ran of 4."""
    env = {**app_env(), "TOY_LOSE_DB": f"{lost_in}:2"}
    beats = "hydra.sweeper.heartbeat_interval=1"  # a trial left RUNNING is waited for 4 s, not 4 minutes
    proc = run_app(tmp_path, "x=interval(-2.0,2.0)", "hydra.sweeper.n_trials=4", beats, env=env)
    assert states(load(tmp_path)) == ["COMPLETE"] * 4
    logs = proc.stdout + proc.stderr
    assert "asking for a trial failed (" in logs and "server closed the connection" in logs, "the ask lost it"
    assert "asking for a trial succeeded after 2 tries" in logs


def test_a_trial_left_running_by_an_ask_that_never_finished_is_failed_and_run_again_by_the_next_run(tmp_path):
    """The worker loses the database for good in the middle of an ask (reconnect_timeout=0): it stops with one
    error, and the trial its ask created stays RUNNING with no heartbeat. Optuna never fails such a trial as stale,
    so it held a place of the budget for ever; the next run gives it a first heartbeat, fails it after grace_period
    and runs its parameters again."""
    args = ["x=interval(-2.0,2.0)", "hydra.sweeper.n_trials=4", "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=2"]  # fmt: skip
    env = {**app_env(), "TOY_LOSE_DB": "INSERT INTO trial_params:2"}
    first = run_app(tmp_path, *args, "hydra.sweeper.reconnect_timeout=0", env=env, check=False)
    assert first.returncode != 0
    assert "while asking for a trial" in first.stderr and "The trial this ask created stays RUNNING" in first.stderr
    assert states(load(tmp_path)) == ["COMPLETE", "RUNNING"]

    second = run_app(tmp_path, *args)
    study = load(tmp_path)
    assert states(study)[1] == "FAIL" and states(study).count("COMPLETE") == 4, states(study)
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert retry.state == TrialState.COMPLETE
    assert "trial 1 was left RUNNING by an ask that never finished" in second.stdout + second.stderr


def test_an_interrupted_sweep_fails_its_running_trial_instead_of_leaving_it_running(tmp_path):
    proc = subprocess.Popen(
        app_command(tmp_path, "x=0,1", "hydra/sweeper/sampler=grid", "sleep_s=5"),
        cwd=tmp_path,
        env=app_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # a suite started in the background (`cmd &` in a script) ignores SIGINT, and a child inherits that: undo it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "sweep" / "trial_0" / "running").exists():
        time.sleep(0.2)  # until the job is in its trial, however slow the machine
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    (trial,) = load(tmp_path).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("the sweep stopped while the job ran: KeyboardInterrupt")


def test_an_in_memory_study_still_reports_and_prunes_in_process(tmp_path):
    proc = run_app(
        tmp_path, "x=-2,-1,0,1,2,3", "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=2", storage="null",
    )  # fmt: skip
    assert "PRUNED" in proc.stdout and "storage=null" in proc.stdout
    assert not (tmp_path / "study.db").exists()


def test_a_journal_file_storage_works_and_the_commands_name_the_file(tmp_path):
    journal = tmp_path / "journal.log"
    proc = run_app(tmp_path, "x=0,1", "hydra/sweeper/sampler=grid", storage=f"journal:///{journal}")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert len(study.trials) == 2 and all(t.intermediate_values for t in study.trials)
    assert f"optuna-dashboard {journal}" in proc.stdout
    assert f"python -m analysis.report --storage {journal} --study {STUDY}" in proc.stdout


def test_the_shim_works_when_the_project_is_pip_installed_beside_other_hydra_plugins(tmp_path):
    """Installed (not from the checkout): `hydra_plugins` stays a namespace, so the joblib launcher still loads."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    for package in ("sweeper", "hydra_plugins"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    readme = ROOT / "README.md"
    (src / "README.md").write_text(readme.read_text() if readme.exists() else "lorasweep\n")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site),
         str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert not (site / "hydra_plugins" / "__init__.py").exists()
    assert (site / "hydra_plugins" / "lorasweep_sweeper" / "lorasweep_sweeper.py").exists()
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    run_app(run_dir, "x=0,1", "hydra/sweeper/sampler=grid", "hydra/launcher=joblib", env=app_env(pythonpath=site))
    assert states(load(run_dir)) == ["COMPLETE", "COMPLETE"]


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (None, [("medium", 3.0), ("small", 3.0), ("medium", 1.5)]),
        ("[model]", [("medium", 3.0), ("small", 3.0)]),
    ],
)
def test_pruning_within_groups_prunes_against_the_own_group_and_never_against_another(tmp_path, group_by, expected):
    # medium's loss is small's + 0.5 at every step; x=0.5 and x=1.5 are equally good (symmetric about the optimum),
    # x=3.0 is bad. The grid's order for seed 7: medium 0.5, medium 3.0, small 0.5, small 3.0, small 1.5, medium 1.5.
    # Grouped by model, each x=3.0 trial is stopped against the x=0.5 trial of its own model, and medium 1.5 runs to
    # the end (as good as medium 0.5); ungrouped, medium 1.5 is also stopped, for being medium (the small ones are
    # better).
    args = [
        "model=small,medium", "x=0.5,1.5,3.0", "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=7",
        "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
    ]  # fmt: skip
    proc = run_app(tmp_path, *args, *([f"hydra.sweeper.pruner.group_by={group_by}"] if group_by else []))
    study = load(tmp_path, "toy-small+medium-lora")
    order = [(t.params["model"], t.params["x"]) for t in study.trials]
    assert order == [("medium", 0.5), ("medium", 3.0), ("small", 0.5), ("small", 3.0), ("small", 1.5), ("medium", 1.5)]
    pruned = [(t.params["model"], t.params["x"]) for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned == expected, states(study)
    if group_by:
        assert "MedianPruner within model" in proc.stderr + proc.stdout
    else:
        assert "group_by=[model]" in proc.stderr + proc.stdout, "the sweep says how to compare within models"


def test_a_group_by_key_neither_swept_nor_fixed_still_prunes(tmp_path):
    # every trial is model=small from the app's config; the group is then the whole study, as without group_by
    args = [
        "x=0.5,3.0", "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=1", "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.group_by=[model,finetune]",
    ]  # fmt: skip
    proc = run_app(tmp_path, *args)
    study = load(tmp_path)
    assert [(t.params["x"], t.state.name) for t in study.trials] == [(0.5, "COMPLETE"), (3.0, "PRUNED")]
    assert "one value for all" not in proc.stdout + proc.stderr


def probe(out: Path) -> str:
    """tests/apps/leak_probe.py as a Hydra callback: one JSON line per job start."""
    return f"+hydra.callbacks.probe={{_target_:leak_probe.LeakProbe,out:'{out}'}}"


def test_nothing_of_a_complete_failed_or_pruned_trial_survives_into_the_next_one(tmp_path):
    import torch

    threads = torch.get_num_threads() + 1  # every trial sets this; the next one must start with the default again
    out = tmp_path / "probe.jsonl"
    # grid order for seed 5: x=1.0 COMPLETE, x=5.0 FAIL (NaN), x=3.0 PRUNED, x=2.0 PRUNED (basic launcher: in-process)
    run_app(
        tmp_path, "x=1.0,5.0,3.0,2.0", "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=5", "nan_above=4",
        "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1", "torch_module=true",
        f"threads={threads}", probe(out),
    )  # fmt: skip
    study = load(tmp_path)
    assert states(study) == ["COMPLETE", "FAIL", "PRUNED", "PRUNED"]
    starts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["job"] for s in starts] == [0, 1, 2, 3]
    default = starts[0]["threads"]
    assert default != threads
    for before, start in zip(study.trials, starts[1:], strict=False):
        assert start["alive"] == 0, f"the model of the {before.state.name} trial {before.number} is still alive"
        assert start["threads"] == default, f"trial {before.number} set {threads} threads, and they stayed"


def test_an_extended_study_runs_a_finite_space_again_under_its_new_settings(tmp_path):
    """lora.rank=2,4 ran with steps=2; extended with steps=3 both points run again (they were taken only under the
    old settings), and a third run of the same command runs nothing more."""
    run_app(tmp_path, "x=0.5,1.5", "steps=2")
    proc = run_app(tmp_path, "x=0.5,1.5", "steps=3", "hydra.sweeper.extend_study=true")
    study = load(tmp_path)
    ran = sorted((t.user_attrs["steps"], t.params["x"]) for t in study.trials if t.state == TrialState.COMPLETE)
    assert ran == [(2, 0.5), (2, 1.5), (3, 0.5), (3, 1.5)], proc.stdout + proc.stderr
    run_app(tmp_path, "x=0.5,1.5", "steps=3")
    assert len(load(tmp_path).trials) == 4


def test_an_extended_grid_study_refuses_other_fixed_settings_in_one_line(tmp_path):
    run_app(tmp_path, "x=0.5,1.5", "steps=2", "hydra/sweeper/sampler=grid")
    proc = run_app(
        tmp_path, "x=0.5,1.5", "steps=3", "hydra/sweeper/sampler=grid", "hydra.sweeper.extend_study=true", check=False
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "extend_study under the grid sampler must keep the study's fixed settings" in proc.stderr
    assert "steps=3 (the study has 2)" in proc.stderr and len(load(tmp_path).trials) == 2
