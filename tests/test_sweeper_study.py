"""Budget, outcomes and the job-side trial handle against a real SQLite study (no Hydra process needed)."""

from __future__ import annotations

import itertools
import math
import time

import optuna
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweeper import ENV_STUDY, ENV_TRIAL, current_trial, user_attrs_from_metrics
from sweeper._budget import NOT_RUN, Budget, is_not_run
from sweeper._finite import DistinctPointSampler, FiniteSpace
from sweeper._heartbeat import RETRY_OF, Heartbeat, RetryStaleTrial, quiet_heartbeat_warnings
from sweeper._outcome import judge, record, tell
from sweeper._storage import HeartbeatSettings, is_creation_race, is_transient, open_storage, open_study, with_retries
from sweeper._trial import ENV_STORAGE

X = {"x": FloatDistribution(0.0, 1.0)}


@pytest.fixture
def storage_url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


def make_study(url, sampler=None, directions=("minimize",), pruner=None, name="s"):
    return open_study(
        open_storage(url),
        name,
        list(directions),
        sampler or optuna.samplers.RandomSampler(seed=0),
        pruner or optuna.pruners.NopPruner(),
        None,
    )


def test_ask_first_then_count_lets_exactly_n_trials_run_when_workers_race(storage_url):
    study, budget = make_study(storage_url), Budget(n_trials=2)
    # three workers each saw one place left and asked before anyone counted
    asked = [study.ask(X) for _ in range(3)]
    admitted = [t for t in asked if budget.admits(study, t)]
    assert [t.number for t in admitted] == [0, 1]
    budget.discard(study, asked[2])
    third = study.trials[2]
    assert third.state == TrialState.FAIL and third.user_attrs["fail_reason"] == NOT_RUN and is_not_run(third)
    assert budget.used(study) == 2 and budget.left(study) == 0
    # a failure frees its place in the budget, a pruned trial keeps it
    study.tell(asked[0], state=TrialState.FAIL)
    study.tell(asked[1], state=TrialState.PRUNED)
    assert budget.left(study) == 1


def test_grid_points_run_once_and_a_discarded_trial_gives_its_point_back(storage_url):
    grid = {"r": [4, 8, 16]}
    study = make_study(storage_url, sampler=optuna.samplers.GridSampler(grid))
    budget = Budget(n_trials=20, grid=grid)
    assert budget.n_trials == 3
    dist = {"r": CategoricalDistribution([4, 8, 16])}
    first = study.ask(dist)
    study.tell(first, state=TrialState.FAIL)  # a failed grid point is not run again, as in Optuna
    assert budget.left(study) == 2
    second = study.ask(dist)
    budget.discard(study, second)  # lost a race: its point is free again
    assert budget.left(study) == 2
    seen = {first.params["r"]}
    while budget.left(study) > 0:
        trial = study.ask(dist)
        assert budget.admits(study, trial)
        seen.add(trial.params["r"])
        record(study, trial, judge(_returned(1.0), None, 1), run_dir=None)  # GridSampler's stop() is tolerated
    assert seen == {4, 8, 16}


def test_a_finite_space_runs_each_point_once_under_a_sampler_that_draws_with_replacement(storage_url):
    dist = {"r": CategoricalDistribution([4, 8, 16]), "b": IntDistribution(1, 2)}
    finite = FiniteSpace(dist)
    sampler = DistinctPointSampler(optuna.samplers.RandomSampler(seed=0), finite, seed=0)
    study, budget = make_study(storage_url, sampler=sampler), Budget(n_trials=20, finite=finite)
    assert finite.n_points == 6 and budget.in_effect == 6 and budget.n_trials == 20
    points = []
    while budget.runnable(study):
        trial = study.ask(dist)
        assert budget.admits(study, trial)
        points.append((trial.params["r"], trial.params["b"]))
        study.tell(trial, 1.0 if len(points) != 2 else None, state=TrialState.FAIL if len(points) == 2 else None)
    assert sorted(points) == sorted(itertools.product([4, 8, 16], [1, 2])), "each point once, the failed one too"
    assert budget.exhausted(study) and budget.left(study) == 0


def test_two_workers_racing_for_one_point_of_a_finite_space_run_it_once(storage_url):
    dist = {"r": CategoricalDistribution([4, 8])}
    finite = FiniteSpace(dist)
    study, budget = make_study(storage_url), Budget(n_trials=20, finite=finite)
    study.enqueue_trial({"r": 4})  # both workers got rank 4 (asked before either was recorded)
    study.enqueue_trial({"r": 4})
    first, second = study.ask(dist), study.ask(dist)
    assert budget.admits(study, first) and not budget.admits(study, second)
    budget.discard(study, second)
    assert budget.left(study) == 1, "the loser's point is not counted: rank 8 is left"


def _returned(value=None, error=None):
    ret = JobReturn()
    ret.status = JobStatus.FAILED if error is not None else JobStatus.COMPLETED
    ret.return_value = error if error is not None else value
    return ret


@pytest.mark.parametrize(
    ("ret", "launch_error", "n", "state", "reason"),
    [
        (_returned(0.5), None, 1, TrialState.COMPLETE, None),
        (_returned((0.9, 12.0)), None, 2, TrialState.COMPLETE, None),
        (_returned(error=optuna.TrialPruned("at step 3")), None, 1, TrialState.PRUNED, None),
        (_returned(error=FloatingPointError("nan loss")), None, 1, TrialState.FAIL, "FloatingPointError: nan loss"),
        (_returned(math.nan), None, 1, TrialState.FAIL, "the job returned a NaN objective"),
        (_returned(None), None, 1, TrialState.FAIL, "the job must return a float, but got value=None"),
        (_returned(0.5), None, 2, TrialState.FAIL, "the job must return a sequence of 2 floats"),
        (None, RuntimeError("worker killed"), 1, TrialState.FAIL, "the launcher failed before the job returned"),
    ],
)
def test_each_job_result_becomes_one_trial_state(ret, launch_error, n, state, reason):
    outcome = judge(ret, launch_error, n)
    assert outcome.state == state
    assert (outcome.reason is None) == (reason is None)
    if reason:
        assert reason in outcome.reason


def test_recorded_outcomes_keep_the_last_value_of_a_pruned_trial_and_the_reason_of_a_failed_one(storage_url):
    study = make_study(storage_url)
    pruned, failed = study.ask(X), study.ask(X)
    pruned.report(0.7, 1)
    pruned.report(0.6, 2)
    record(study, pruned, judge(_returned(error=optuna.TrialPruned()), None, 1), run_dir="/runs/trial_0")
    record(study, failed, judge(_returned(error=MemoryError("CUDA out of memory")), None, 1), run_dir=None)
    p, f = study.trials
    assert p.state == TrialState.PRUNED and p.value == 0.6 and p.intermediate_values == {1: 0.7, 2: 0.6}
    assert p.user_attrs["run_dir"] == "/runs/trial_0"
    assert f.state == TrialState.FAIL and f.user_attrs["fail_reason"] == "MemoryError: CUDA out of memory"


def test_a_resumed_study_with_other_directions_or_objective_is_an_error(storage_url):
    make_study(storage_url, directions=("maximize",))
    with pytest.raises(ValueError, match=r"but got direction=\['minimize'\] for study 's' stored with \['maximize'\]"):
        make_study(storage_url, directions=("minimize",))
    sampler, pruner = optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    study = open_study(open_storage(storage_url), "m", ["maximize"], sampler, pruner, ["a"])
    assert study.metric_names == ["a"]
    with pytest.raises(ValueError, match=r"but got objective=\['b'\] for study 'm' stored with \['a'\]"):
        open_study(open_storage(storage_url), "m", ["maximize"], sampler, pruner, ["b"])


METRICS = {
    "objective": {"name": "accuracy", "key": "val_accuracy", "direction": "maximize", "value": 0.9},
    "metrics": {"val_loss": 0.3, "val_accuracy": 0.9, "val_macro_f1": 0.8, "test_accuracy": 0.88, "best_step": 20},
    "summary": {"task": "sms_spam", "model": "tiny", "finetune": "lora", "lora_rank": 4, "lr": 3e-4},
    "trainable_params": 8320,
    "total_params": 3390400,
    "peak_memory_mb": 497.6,
    "device": "cpu",
    "run_dir": "/runs/trial_0",
    "stopped_early": False,
    "train_curve": [{"step": 1, "loss": 0.7, "lr": 1e-4}],
    "val_curve": [
        {"step": 10, "val_loss": 0.5, "val_accuracy": 0.8},
        {"step": 20, "val_loss": 0.3, "val_accuracy": 0.9},
    ],
    "config": {"model": {"name": "tiny"}},
}


def test_every_scalar_of_metrics_summary_and_top_level_becomes_a_user_attribute():
    attrs = user_attrs_from_metrics(METRICS)
    expected_names = set(METRICS["metrics"]) | set(METRICS["summary"]) | {"objective_name"}
    expected_names |= {k for k, v in METRICS.items() if not isinstance(v, (dict, list))}
    assert set(attrs) == expected_names
    assert attrs["objective_name"] == "accuracy" and attrs["lora_rank"] == 4 and attrs["stopped_early"] is False
    multi = {**METRICS, "objective": {"name": ["accuracy", "trainable_params"]}}
    assert user_attrs_from_metrics(multi)["objective_name"] == ["accuracy", "trainable_params"]


def test_current_trial_is_none_outside_a_sweep(monkeypatch):
    monkeypatch.delenv(ENV_STUDY, raising=False)
    monkeypatch.delenv(ENV_TRIAL, raising=False)
    assert current_trial() is None


def test_the_job_side_handle_reports_prunes_and_attaches_metrics(storage_url, monkeypatch):
    study = make_study(storage_url, name="job")
    done = study.ask(X)
    done.report(0.5, 10)
    study.tell(done, 0.5)
    trial = study.ask(X)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # a job run outside Hydra (no hydra.sweeper config)
    monkeypatch.setenv(ENV_STUDY, "job")
    monkeypatch.setenv(ENV_TRIAL, str(trial.number))
    monkeypatch.setenv(ENV_STORAGE, storage_url)
    handle = current_trial()
    assert handle is not None and handle.number == trial.number and current_trial() is handle
    handle.report(0.8, 10)
    assert handle.should_prune() is False, "outside Hydra there is no pruner config: never prune"
    handle.set_metrics(METRICS)
    stored = study.trials[trial.number]
    assert stored.intermediate_values == {10: 0.8, 20: 0.9}, "the curve fills steps not reported, keeps reported ones"
    assert stored.user_attrs == user_attrs_from_metrics(METRICS)


def test_transient_database_errors_are_retried_until_the_timeout_and_others_are_raised_at_once():
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import IntegrityError, OperationalError

    calls = []

    def flaky(fail_times: int, error: Exception) -> str:
        calls.append(1)
        if len(calls) <= fail_times:
            raise error
        return "opened"

    lost = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    assert with_retries(lambda: flaky(2, lost), "reading", first_wait_s=0.001) == "opened" and len(calls) == 3
    calls.clear()
    wrapped = StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = lost  # how Optuna's RDB storage passes a lost connection on
    assert is_transient(wrapped)
    assert with_retries(lambda: flaky(1, wrapped), "telling", first_wait_s=0.001) == "opened"
    calls.clear()
    with pytest.raises(OperationalError):
        with_retries(lambda: flaky(100, lost), "reading", timeout_s=0.05, first_wait_s=0.001)
    assert 2 <= len(calls) < 100
    calls.clear()
    race = IntegrityError("INSERT INTO alembic_version", {}, Exception("duplicate key"))
    with pytest.raises(IntegrityError):
        with_retries(lambda: flaky(1, race), "writing", first_wait_s=0.001)
    assert len(calls) == 1, "a constraint error is not a lost connection"
    assert with_retries(lambda: flaky(2, race), "creating tables", first_wait_s=0.001, retry_on=is_creation_race)


def test_a_dead_workers_trial_is_failed_retried_with_its_grid_point_and_counted_once(tmp_path):
    """Heartbeats on a real SQLite storage: the stale trial frees its place, its WAITING retry takes it."""
    grid = {"r": [4, 8, 16]}
    dist = {"r": CategoricalDistribution([4, 8, 16])}
    retry = RetryStaleTrial(max_retry=1, grace_period=1, timeout_s=5)
    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat=HeartbeatSettings(1, 1, retry))
    sampler, pruner = optuna.samplers.GridSampler(grid, seed=0), optuna.pruners.NopPruner()
    study = open_study(storage, "hb", ["minimize"], sampler, pruner, None)
    heartbeat, budget = Heartbeat(study, grace_period=1), Budget(n_trials=3, grid=grid)
    quiet_heartbeat_warnings()
    dead = study.ask(dist)
    heartbeat.add(dead)  # one beat, then its worker "dies": nothing beats again
    done = study.ask(dist)
    tell(study, done, TrialState.COMPLETE, [1.0])  # tolerates GridSampler's study.stop()
    time.sleep(2.5)
    assert budget.left(study) == 1, "the dead trial still holds its place"
    heartbeat.fail_stale()
    heartbeat.fail_stale()  # a second worker checking at the same time queues nothing more
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.WAITING]
    queued = trials[2]
    assert queued.params == dead.params and queued.user_attrs == {RETRY_OF: dead.number}
    assert RetryStaleTrial.retried_trial_number(queued) == dead.number
    assert budget.left(study) == 1 and budget.runnable(study)
    again = study.ask(dist)  # any worker's next ask runs the queued retry first
    assert again.number == queued.number and again.params == dead.params
    assert budget.admits(study, again), "a retry may take the grid point of the trial it replaces"
    tell(study, again, TrialState.COMPLETE, [2.0])
    last = study.ask(dist)
    assert budget.admits(study, last) and last.params["r"] not in {dead.params["r"], done.params["r"]}
    tell(study, last, TrialState.COMPLETE, [3.0])
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    assert budget.left(study) == 0 and not budget.runnable(study)


def test_a_trial_retried_max_retry_times_is_not_queued_again(tmp_path):
    retry = RetryStaleTrial(max_retry=0, grace_period=1, timeout_s=5)
    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat=HeartbeatSettings(1, 1, retry))
    study = open_study(storage, "hb", ["minimize"], optuna.samplers.RandomSampler(), optuna.pruners.NopPruner(), None)
    heartbeat = Heartbeat(study, grace_period=1)
    quiet_heartbeat_warnings()
    heartbeat.add(study.ask(X))
    time.sleep(2.5)
    heartbeat.fail_stale()
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]
