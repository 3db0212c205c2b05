"""The confirmation phase (issue [12] item 2) against real SQLite studies: the plan, claiming each run once across
workers, and keeping the search's sampler, pruner and budget blind to confirmation runs.

End-to-end sweeps of the toy app (tests/apps/quadratic.py) close the file (marked slow).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from test_sweeper_sweeps import app_command, app_env, load, run_app

from sweeper._budget import Budget, is_not_run
from sweeper._confirm import Chosen, candidates, choose, confirm_overrides, runs_of
from sweeper._confirm_runs import LOST_RACE, ConfirmSource, missing
from sweeper._confirm_settings import ConfirmSettings, confirm_settings
from sweeper._heartbeat import RetryStaleTrial
from sweeper._outcome import tell
from sweeper._phase import SearchOnlyPruner, SearchOnlySampler, confirmation_of
from sweeper._recorded import TRIAL_FIXED_ATTR as FIXED_ATTR
from sweeper._settings import build_settings
from sweeper._storage import open_storage, open_study

SPACE = {"x": FloatDistribution(-2.0, 2.0), "mode": CategoricalDistribution(["full", "lora"])}


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


def make_study(url, sampler=None, pruner=None):
    sampler = sampler or optuna.samplers.RandomSampler(seed=0)
    return open_study(open_storage(url), "s", ["minimize"], sampler, pruner or optuna.pruners.NopPruner(), None)


def fixed_trial(study, value, fixed=None, attrs=None, **params):
    """A finished search trial with exactly `params` (enqueued, so the sampler does not choose them), run with the
    `fixed` settings."""
    study.enqueue_trial(params)
    trial = study.ask({k: SPACE[k] for k in params})
    study._storage.set_trial_system_attr(trial._trial_id, FIXED_ATTR, fixed or {})
    for key, attr in (attrs or {}).items():
        trial.set_user_attr(key, attr)
    study.tell(trial, value)
    return study.trials[trial.number]


def one_plan(trial, seeds=(1000, 1001)):
    return [Chosen(trial, {"mode": trial.params.get("mode")}, 1, tuple(seeds))]


# ------------------------------------------------------------------------------------------------ the plan


def test_the_plan_takes_the_best_of_each_group_with_seeds_apart_from_its_search_seed(url):
    study = make_study(url)
    values = {0: ("full", 0.5), 1: ("full", 0.3), 2: ("lora", 0.9), 3: ("lora", 0.2), 4: ("lora", 0.2)}
    trials = [fixed_trial(study, v, x=0.1 * n, mode=m) for n, (m, v) in values.items()]
    settings = ConfirmSettings(seeds=2, top_k=1, group_by=("mode",), seed_base=41)
    search_seed = {0: 42, 1: 42, 2: 42, 3: 41, 4: 42}
    describe = lambda t: ({"mode": t.params["mode"]}, search_seed[t.number])
    chosen = choose(trials, settings, maximize=False, describe=describe)
    assert [(c.trial.number, c.group, c.rank) for c in chosen] == [(1, {"mode": "full"}, 1), (3, {"mode": "lora"}, 1)]
    assert [c.seeds for c in chosen] == [(41, 43), (42, 43)], "a trial's own search seed is never a confirmation seed"
    assert [r.key for r in runs_of(chosen)] == [(1, 41), (3, 42), (1, 43), (3, 43)], "first seeds first"
    top2 = choose(trials, ConfirmSettings(2, 2, ("mode",), 1000), maximize=True, describe=lambda t: (t.params, 42))
    assert [(c.trial.number, c.rank) for c in top2] == [(0, 1), (1, 2), (2, 1), (3, 2)], "ties: the earlier trial"
    assert [c.trial.number for c in choose(trials, ConfirmSettings(1, 1, (), 1000), False, lambda t: ({}, 0))] == [3]


def test_candidates_are_complete_search_trials_of_this_command_one_per_configuration(url):
    study = make_study(url)
    kept = fixed_trial(study, 0.4, {"steps": 4}, x=0.5)
    other = fixed_trial(study, 0.1, {"steps": 6}, x=0.2)  # an extended study's older settings
    fixed_trial(study, 0.4, {"steps": 4}, {"duplicate_of": kept.number}, x=0.7)  # reused kept's result
    study.tell(study.ask(SPACE), state=TrialState.FAIL)
    found, left_out = candidates(study.trials, ["x"], {"steps": 4})
    assert [t.number for t in found] == [kept.number] and left_out == [other.number]
    found, _ = candidates(study.trials, ["x", "mode"], {"steps": 4})
    assert found == [], "a trial without a parameter of this search space is another command's"


def test_a_confirmation_runs_overrides_replace_the_seed_phase_and_trial_it_had():
    overrides = ["task=sms_spam", "trainer.seed=7", "lora.rank=8", "++trainer.phase=search"]
    assert confirm_overrides(overrides, 3, 1001) == [
        "task=sms_spam", "lora.rank=8", "trainer.seed=1001", "trainer.phase=confirm", "trainer.confirms=3",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seeds": -1}, r"`confirm.seeds` must be an integer >= 0, but got confirm.seeds=-1"),
        ({"top_k": 0}, r"`confirm.top_k` must be an integer >= 1, but got confirm.top_k=0"),
        ({"seeds": True}, r"but got confirm.seeds=True"),
        (
            {"group_by": "model"},
            r"`confirm.group_by` must be a list of config keys .* but got confirm.group_by='model'",
        ),
        ({"sedes": 3}, r"`confirm` keys must be in \['seeds', 'top_k', 'group_by', 'seed_base'\], but got .*'sedes'"),
    ],
)
def test_bad_confirm_settings_are_one_line_naming_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        confirm_settings(raw)


def test_confirmation_needs_a_single_objective():
    base = {
        "sampler": {"_target_": "optuna.samplers.NSGAIISampler"},
        "pruner": {"_target_": "optuna.pruners.NopPruner"},
        "n_trials": 4,
        "n_jobs": 1,
        "max_failure_rate": 0.5,
    }
    with pytest.raises(ValueError, match=r"`confirm.seeds` needs a single objective .* but got confirm.seeds=3 with"):
        build_settings(**base, direction=["minimize", "maximize"], confirm={"seeds": 3})
    assert build_settings(**base, direction="minimize").confirm == ConfirmSettings()


# ------------------------------------------------------------------------------------- runs in the study


def test_a_run_is_created_running_with_the_confirmed_params_and_its_link(url):
    study = make_study(url)
    best = fixed_trial(study, 0.3, x=0.5, mode="lora")
    trial = ConfirmSource(study, one_plan(best)).take()
    frozen = study.trials[trial.number]
    assert frozen.state == TrialState.RUNNING and frozen.params == best.params
    assert frozen.distributions == best.distributions
    assert {k: frozen.user_attrs[k] for k in ("phase", "confirms", "seed")} == {
        "phase": "confirm", "confirms": best.number, "seed": 1000,
    }  # fmt: skip
    assert confirmation_of(frozen) == (best.number, 1000)


def test_two_workers_creating_the_same_run_at_once_run_it_once(url):
    first, second = make_study(url), make_study(url)  # two processes' views of one study
    best = fixed_trial(first, 0.3, x=0.5, mode="lora")
    plan = one_plan(best, seeds=(1000,))
    a, b = ConfirmSource(first, plan), ConfirmSource(second, plan)
    seen_by_b = b.missing()  # b read the study before a created its trial
    ran = a.take()
    b.missing = lambda: seen_by_b
    assert b.take() is None, "b created its trial, found a's numbered before it, and closed its own"
    lost = second.trials[-1]
    assert lost.state == TrialState.FAIL and is_not_run(lost) and lost.user_attrs["fail_reason"] == LOST_RACE
    assert [t.number for t in first.trials if confirmation_of(t) and not is_not_run(t)] == [ran.number]


def test_what_is_missing_complete_running_failed_and_a_worker_does_not_retry_its_own_failure(url):
    study = make_study(url)
    best = fixed_trial(study, 0.3, x=0.5, mode="lora")
    plan = one_plan(best)
    source = ConfirmSource(study, plan)
    first = source.take()
    assert [r.seed for r in source.missing()] == [1001], "a RUNNING run is under way"
    second = source.take()
    tell(study, first, TrialState.COMPLETE, [0.31])
    tell(study, second, TrialState.FAIL)
    assert [r.seed for r in source.missing()] == [1001], "a FAIL run is missing again"
    assert source.take() is None, "this worker saw it fail: the next run of the command tries again"
    again = ConfirmSource(study, plan).take()
    assert confirmation_of(study.trials[again.number]) == (best.number, 1001)
    tell(study, again, TrialState.COMPLETE, [0.29])
    assert missing(runs_of(plan), study.trials) == []


def test_a_stale_confirmation_run_is_failed_but_not_queued_where_the_search_would_take_it(url):
    study = make_study(url)
    best = fixed_trial(study, 0.3, x=0.5, mode="lora")
    run = ConfirmSource(study, one_plan(best)).take()
    tell(study, run, TrialState.FAIL)
    RetryStaleTrial(max_retry=3, grace_period=10, timeout_s=1)(study, study.trials[run.number])
    assert not study.get_trials(states=(TrialState.WAITING,)), "study.ask would hand a WAITING copy to the search"


# ------------------------------------------------------------------------- the search does not see them


class Recording(optuna.samplers.RandomSampler):
    """Optuna's random sampler, noting which trials each call was shown."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.shown: list[list[int]] = []

    def infer_relative_search_space(self, study, trial):
        self.shown.append([t.number for t in study._get_trials(deepcopy=False, use_cache=True)])
        self.shown.append([t.number for t in study.get_trials(deepcopy=False)])
        return super().infer_relative_search_space(study, trial)


def test_the_sampler_and_the_budget_see_search_trials_only(url):
    recording = Recording()
    study = make_study(url, sampler=SearchOnlySampler(recording))
    searched = [fixed_trial(study, 0.5, x=0.1 * i, mode="lora") for i in range(2)]
    source = ConfirmSource(study, one_plan(searched[0], seeds=(1000, 1001, 1002)))
    for _ in range(3):
        tell(study, source.take(), TrialState.COMPLETE, [0.01])
    budget = Budget(n_trials=3)
    assert budget.used(study) == 2 and budget.left(study) == 1, "confirmation runs do not spend n_trials"
    recording.shown.clear()
    trial = study.ask(SPACE)
    trial.suggest_float("x", -2, 2)
    assert recording.shown and all(numbers == [0, 1, trial.number] for numbers in recording.shown)


def test_a_grid_sampler_gives_confirmation_runs_no_point_and_keeps_its_own(url):
    grid = {"mode": ["full", "lora"]}
    study = make_study(url, sampler=SearchOnlySampler(optuna.samplers.GridSampler(grid, seed=0)))
    dist = {"mode": SPACE["mode"]}
    first = study.ask(dist)
    first.suggest_categorical("mode", ["full", "lora"])
    study.tell(first, 0.5)
    run = ConfirmSource(study, one_plan(study.trials[0])).take()
    assert "grid_id" not in study.trials[run.number].system_attrs
    tell(study, run, TrialState.COMPLETE, [0.4])
    second = study.ask(dist)
    assert second.suggest_categorical("mode", ["full", "lora"]) != first.params["mode"], "the other point is left"


def test_pruning_compares_search_trials_only_and_never_stops_a_confirmation_run(url):
    median = optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=0)
    study = make_study(url)
    study.enqueue_trial({"x": 0.0})
    searched = study.ask({"x": SPACE["x"]})
    searched.report(1.0, 1)
    study.tell(searched, 1.0)
    done = study.trials[searched.number]
    for _ in range(3):  # the best configuration's seeds: far better curves
        run = ConfirmSource(study, one_plan(done, seeds=(1000 + _,))).take()
        run.report(0.1, 1)
        tell(study, run, TrialState.COMPLETE, [0.1])
    trial = study.ask(SPACE)
    trial.report(0.5, 1)
    frozen = study.trials[trial.number]
    assert median.prune(study, frozen), "Optuna's own pruner, shown every trial, stops it against the seeds"
    assert not SearchOnlyPruner(median).prune(study, frozen), "against search trials only it goes on"
    bad = ConfirmSource(study, one_plan(done, seeds=(2000,))).take()
    bad.report(99.0, 1)
    assert median.prune(study, study.trials[bad.number])
    assert not SearchOnlyPruner(median).prune(study, study.trials[bad.number]), "a confirmation run is never pruned"


# ---------------------------------------------------------------------------- end to end: the toy app


TOY = ["x=interval(-2.0,2.0)", "finetune.mode=full,lora", "lora.rank=4,8", "hydra/sweeper/sampler=random",
       "hydra.sweeper.sampler.seed=3", "seed_noise=0.1"]  # fmt: skip


def runs_by_trial(study):
    out = {}
    for t in study.trials:
        key = confirmation_of(t)
        if key is not None and not is_not_run(t):
            out.setdefault(key, []).append(t)
    return out


@pytest.mark.slow
def test_a_sweep_confirms_the_best_of_each_group_and_a_rerun_completes_only_what_is_missing(tmp_path):
    pruner = ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=0"]
    run_app(tmp_path, *TOY, *pruner, "hydra.sweeper.n_trials=6", "hydra.sweeper.confirm.seeds=2")
    study = load(tmp_path)
    search = [t for t in study.trials if confirmation_of(t) is None]
    assert len(search) == 6, "confirmation runs do not count against n_trials"
    done = [t for t in search if t.state == TrialState.COMPLETE]
    groups = {}
    for t in done:  # full fine-tuning ignores lora.rank: one group
        lora = t.params["finetune.mode"] == "lora"
        groups.setdefault((t.params["finetune.mode"], t.params["lora.rank"] if lora else None), []).append(t)
    best = {min(ts, key=lambda t: (t.value, t.number)).number for ts in groups.values()}
    runs = runs_by_trial(study)
    assert {n for n, _ in runs} == best and len(runs) == 2 * len(best)
    for (number, seed), (trial,) in runs.items():
        assert trial.state == TrialState.COMPLETE, "never pruned, however bad its curve"
        assert trial.params == study.trials[number].params and seed in (1000, 1001)
        assert {k: trial.user_attrs[k] for k in ("phase", "confirms", "seed")} == {
            "phase": "confirm", "confirms": number, "seed": seed,
        }  # fmt: skip
        config = yaml.safe_load((Path(trial.user_attrs["run_dir"]) / ".hydra" / "config.yaml").read_text())
        assert config["trainer"] == {"batch_size": 8, "seed": seed, "phase": "confirm", "confirms": number}
        assert trial.value != study.trials[number].value, "another seed, another value (seed_noise)"
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_trial"] in best and sum(results["trials"].values()) == 6
    assert results["confirmation_runs"] == {"COMPLETE": 2 * len(best)}
    assert {r["trial"]: sorted(r["values"]) for r in results["confirmed"]} == {n: [1000, 1001] for n in best}

    before = len(study.trials)
    proc = run_app(tmp_path, *TOY, *pruner, "hydra.sweeper.n_trials=6", "hydra.sweeper.confirm.seeds=2")
    assert len(load(tmp_path).trials) == before, "the same command again runs nothing"
    assert "0 to run" in proc.stderr + proc.stdout

    run_app(tmp_path, *TOY, *pruner, "hydra.sweeper.n_trials=8", "hydra.sweeper.confirm.seeds=3")
    study = load(tmp_path)
    assert len([t for t in study.trials if confirmation_of(t) is None]) == 8, "n_trials counts search trials only"
    runs = runs_by_trial(study)
    assert all(len(ts) == 1 for ts in runs.values()), "no run twice"
    kept = {n for n, s in runs if s == 1002}
    assert kept and all((n, 1000) in runs and (n, 1001) in runs for n in kept)


@pytest.mark.slow
def test_a_database_lost_while_a_confirmation_run_is_claimed_still_runs_that_run_once(tmp_path):
    """The connection drops after the first confirmation run's trial was created and before it was claimed: the
    retry goes on with that trial. Claiming again left it RUNNING for ever, and its run never ran."""
    env = {**app_env(), "TOY_LOSE_DB": "SELECT:7"}  # 6 search trials, then the first confirmation run
    beats = "hydra.sweeper.heartbeat_interval=1"  # a trial left RUNNING is waited for 4 s, not 4 minutes
    proc = run_app(tmp_path, *TOY, "hydra.sweeper.n_trials=6", "hydra.sweeper.confirm.seeds=2", beats, env=env)
    logs = proc.stdout + proc.stderr
    assert "claiming a confirmation run failed (" in logs and "server closed the connection" in logs
    study = load(tmp_path)
    runs = runs_by_trial(study)
    assert runs and all([t.state for t in ts] == [TrialState.COMPLETE] for ts in runs.values()), runs
    assert not [t.number for t in study.trials if t.state == TrialState.RUNNING]


@pytest.mark.slow
def test_two_workers_with_two_joblib_slots_each_run_every_confirmation_once(tmp_path):
    args = [*TOY, "hydra.sweeper.n_trials=4", "hydra.sweeper.confirm.seeds=3", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", "sleep_s=0.05"]  # fmt: skip
    command = app_command(tmp_path, *args)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    procs = [subprocess.Popen(command, cwd=tmp_path, env=app_env(), **pipes) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = load(tmp_path)
    runs = runs_by_trial(study)
    confirmed = {n for n, _ in runs}
    assert len(runs) == 3 * len(confirmed) and all(len(ts) == 1 for ts in runs.values()), runs
    assert all(ts[0].state == TrialState.COMPLETE for ts in runs.values())
    unrun = [t for t in study.trials if is_not_run(t)]
    assert all(t.state == TrialState.FAIL for t in unrun), "only races leave trials closed unrun"


@pytest.mark.parametrize("experiment", ["sms_spam_report", "sst2_report", "ag_news_report", "alpaca_report"])
def test_the_report_experiments_confirm_with_three_seeds(compose_cfg, experiment):
    sweeper = compose_cfg(f"experiment={experiment}").hydra.sweeper
    settings = confirm_settings(dict(sweeper.confirm))
    assert settings == ConfirmSettings(seeds=3, top_k=1, group_by=("task", "model", "finetune", "lora.rank"))
