"""The private Optuna names the sweeper relies on (sweeper/_optuna_private.py) still exist and mean the same.

Each check runs the helper against a real study; an Optuna release that renames or moves one of them fails here,
naming it, instead of deep inside a sweep.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import ExperimentalWarning

from sweeper import _optuna_private as private


@contextlib.contextmanager
def names(what: str) -> Iterator[None]:
    """Turn a missing private name into one clear failure naming it and the module to update."""
    try:
        yield
    except (AttributeError, ImportError, KeyError, TypeError) as e:
        pytest.fail(
            f"Optuna {optuna.__version__} no longer provides {what} ({type(e).__name__}: {e}); "
            "update sweeper/_optuna_private.py and the optuna bound in pyproject.toml"
        )


@pytest.fixture
def rdb_storage(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'p.db'}", heartbeat_interval=5, grace_period=10)


def test_study_storage_and_trial_ids_address_the_same_trial(rdb_storage):
    study = optuna.create_study(storage=rdb_storage, study_name="p")
    trial = study.ask({"x": CategoricalDistribution([1, 2])})
    with names("Study._storage"):
        storage = private.study_storage(study)
        assert isinstance(storage, optuna.storages.BaseStorage)
    with names("Trial._trial_id / FrozenTrial._trial_id"):
        tid = private.trial_id(trial)
        frozen = storage.get_trial(tid)
        assert frozen.number == trial.number and private.trial_id(frozen) == tid
    with names("Study._study_id"):
        assert private.trial_id_of_number(study, trial.number) == tid


def test_heartbeat_flag_and_retry_limit(rdb_storage):
    with_heartbeat = optuna.create_study(storage=rdb_storage, study_name="h")
    without = optuna.create_study()
    with names("optuna.storages._heartbeat.is_heartbeat_enabled"):
        assert private.heartbeat_enabled(private.study_storage(with_heartbeat)) is True
        assert private.heartbeat_enabled(private.study_storage(without)) is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
    with names("RetryHeartbeatStaleTrialCallback._max_retry"):
        assert private.max_retry(callback) == 2


def test_grid_sampler_marks_each_trial_with_its_point_and_grid():
    grid = {"x": [1, 2, 3]}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    trials = [study.ask({"x": CategoricalDistribution([1, 2, 3])}) for _ in range(3)]
    with names(f"GridSampler's trial system attributes {private.GRID_ID_ATTR!r} and {private.GRID_SPACE_ATTR!r}"):
        attrs = [t.system_attrs for t in study.trials]
        assert all(a[private.GRID_SPACE_ATTR] == grid for a in attrs)
        ids = [a[private.GRID_ID_ATTR] for a in attrs]
    assert sorted(ids) == [0, 1, 2], "one grid point per trial, numbered from 0"
    assert sorted(t.params["x"] for t in trials) == [1, 2, 3]


def test_a_retry_names_the_trials_it_replaces(rdb_storage):
    study = optuna.create_study(storage=rdb_storage, study_name="r")
    stale = study.ask({"x": CategoricalDistribution([1, 2])})
    study.tell(stale, state=optuna.trial.TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[0])
        retry = study.trials[1]
        public = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(retry)
    with names(f"the retry's system attribute {private.RETRY_HISTORY_ATTR!r}"):
        assert private.retry_history(retry) == public == [stale.number]


def test_a_trial_created_from_a_template_is_running_with_its_params_and_the_next_number(rdb_storage):
    study = optuna.create_study(storage=rdb_storage, study_name="c")
    first = study.ask({"x": CategoricalDistribution([1, 2])})
    template = optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING, params={"x": 2}, distributions={"x": CategoricalDistribution([1, 2])},
        user_attrs={"phase": "confirm"}, system_attrs={"mark": 1},
    )  # fmt: skip
    with names("Study._study_id"):
        tid = private.create_trial(study, template)
    frozen = private.study_storage(study).get_trial(tid)
    assert frozen.number == first.number + 1 and frozen.state == optuna.trial.TrialState.RUNNING
    assert frozen.params == {"x": 2} and frozen.user_attrs == {"phase": "confirm"} and frozen.system_attrs["mark"] == 1


def test_ask_in_steps_pops_the_queue_creates_otherwise_and_a_retry_goes_on_with_the_same_trial(rdb_storage):
    study = optuna.create_study(storage=rdb_storage, study_name="a", sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"x": CategoricalDistribution([1, 2]), "y": optuna.distributions.FloatDistribution(0, 1)}
    study.enqueue_trial({"x": 2})
    asked: list[int] = []
    with names("Study._pop_waiting_trial_id / Study._thread_local / Trial._suggest"):
        queued = private.ask(study, space, asked)
    assert asked == [private.trial_id(queued)] and queued.number == 0 and queued.params["x"] == 2, "the queue first"
    fresh: list[int] = []
    trial = private.ask(study, {"x": space["x"]}, fresh)  # an attempt that lost the database before writing y
    assert trial.number == 1 and list(study.trials[1].params) == ["x"]
    again = private.ask(study, space, fresh)
    assert again.number == 1 and len(study.trials) == 2, "no second trial"
    assert again.params["x"] == trial.params["x"] and set(study.trials[1].params) == {"x", "y"}
    assert study.trials[1].state == optuna.trial.TrialState.RUNNING


def test_running_trials_without_any_heartbeat_are_found_and_only_those(rdb_storage):
    study = optuna.create_study(storage=rdb_storage, study_name="o")
    other = optuna.create_study(storage=rdb_storage, study_name="other")
    beating, orphan, done = (study.ask() for _ in range(3))
    other.ask()  # another study's trial without a heartbeat is not this study's business
    private.study_storage(study).record_heartbeat(private.trial_id(beating))
    study.tell(done, 1.0)
    with names("optuna.storages._rdb.models (TrialModel, TrialHeartbeatModel) / _CachedStorage._backend"):
        assert private.running_without_heartbeat(study) == [private.trial_id(orphan)]
    private.study_storage(study).record_heartbeat(private.trial_id(orphan))
    assert private.running_without_heartbeat(study) == []
