"""Every use of Optuna's private API, in one place: what it is for, and the public API that would replace it.

Optuna's public `Study` and `Trial` hide their storage and ids, and a Hydra sweeper drives trials outside
`study.optimize`, where Optuna keeps the pieces it needs (heartbeats, the grid's bookkeeping) to itself. Nothing
else in `sweeper/` touches a private name: when an Optuna release moves one, `tests/test_sweeper_optuna_private.py`
fails on that name, and this file is the one to change. `pyproject.toml` bounds Optuna to the versions tested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

# GridSampler's trial system attributes: which grid point a trial holds, and the grid it belongs to. The sweeper's
# budget reads them to count grid points taken across workers, and frees the point of a trial it closes unrun
# (-1: no point). Public replacement: none; `GridSampler.is_exhausted(study)` answers only "all taken?".
GRID_ID_ATTR = "grid_id"
GRID_SPACE_ATTR = "search_space"
RETRY_HISTORY_ATTR = "retry_history"  # see retry_history()


def study_storage(study: optuna.Study) -> BaseStorage:
    """`study._storage`: heartbeats, and reads and writes of one trial by id (system attributes, its state).

    Public replacement: none (`optuna.Study` has no storage property; `optuna.load_study(storage=...)` takes one
    but does not hand it back).
    """
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """`trial._trial_id`: the storage's key of a trial (heartbeats and storage calls are keyed by it, not by number).

    Public replacement: none (`Trial.number` is per study; the storage API takes the global id).
    """
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    """`study._study_id`: the storage's key of a study, for study system attributes (a pack's "closed" flag).

    Public replacement: none (`Study` has `system_attrs` to read, but nothing public writes one).
    """
    return study._study_id


def trial_id_of_number(study: optuna.Study, number: int) -> int:
    """The storage id of trial `number`, for a job that must attach to the trial its sweeper asked for.

    `study._study_id` is private; `BaseStorage.get_trial_id_from_study_id_trial_number` is public.
    Public replacement: none (`optuna.Trial(study, trial_id)` needs the id; `study.trials[number]` is a frozen copy).
    """
    return study_storage(study).get_trial_id_from_study_id_trial_number(study._study_id, number)


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """`optuna.storages._heartbeat.is_heartbeat_enabled`: whether the storage records heartbeats (RDB with
    `heartbeat_interval`). The sweeper beats itself, since heartbeats only run inside `study.optimize`.

    Public replacement: none (`RDBStorage.get_heartbeat_interval()` exists, but not on journal or in-memory storages).
    """
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def max_retry(callback: optuna.storages.RetryHeartbeatStaleTrialCallback) -> int | None:
    """`RetryHeartbeatStaleTrialCallback._max_retry`: the sweeper logs why a stale trial is not queued again.

    Public replacement: none (the constructor argument is not exposed).
    """
    return callback._max_retry


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials a retry (queued by `RetryHeartbeatStaleTrialCallback`) replaces: its system
    attribute `retry_history`. The budget lets a retry re-run the point of the trial it replaces.

    Public replacement: `RetryHeartbeatStaleTrialCallback.retry_history(trial)`, experimental: it warns at every
    call (every budget check), and silencing that from worker threads is not thread-safe.
    """
    return list(trial.system_attrs.get(RETRY_HISTORY_ATTR, []))


def create_trial(study: optuna.Study, template: FrozenTrial) -> int:
    """A new trial of `study` copied from `template` (state, params, attributes), created in one storage call; its
    id. A confirmation run is created RUNNING this way, so no `study.ask` of the search can take it as queued work.

    `study._study_id` is private; `BaseStorage.create_new_trial(study_id, template_trial)` is public.
    Public replacement: `study.add_trial(template)`, which returns nothing: the new trial's number (which decides
    the race when two workers create the same run) would have to be looked up.
    """
    return study_storage(study).create_new_trial(study._study_id, template_trial=template)


def ask(study: optuna.Study, fixed_distributions: dict[str, BaseDistribution], asked: list[int]) -> optuna.Trial:
    """`study.ask(fixed_distributions)` in steps that a retry takes up again: the id of the trial it pops from the
    queue or creates goes into `asked` first, and an `asked` that holds one goes on with that trial.

    `study.ask` creates its trial in one transaction and samples and writes its parameters in others; a connection
    lost in between loses the new trial's id, and asking again leaves that trial RUNNING for ever, with no
    heartbeat, holding a place in the budget (seen when PostgreSQL restarted under two workers). Going on with it
    instead is safe: the trial's parameters already written are read back, the rest sampled and written.

    Private: `Study._thread_local`, `Study._pop_waiting_trial_id`, `Study._study_id` and `Trial._suggest`, the
    steps of `Study.ask` itself. Public replacement: none (`study.ask` hands out the trial only when every step
    succeeded).
    """
    import optuna

    study._thread_local.cached_all_trials = None  # as study.ask: the sampler reads the trials afresh
    if not asked:
        popped = study._pop_waiting_trial_id()
        asked.append(popped if popped is not None else study_storage(study).create_new_trial(study._study_id))
    trial = optuna.Trial(study, asked[0])
    for name, distribution in fixed_distributions.items():
        trial._suggest(name, distribution)
    return trial


def running_without_heartbeat(study: optuna.Study) -> list[int]:
    """The ids of the study's RUNNING trials that have no heartbeat at all (an RDB storage with heartbeats).

    Optuna's `fail_stale_trials` passes over such a trial for ever: a trial is stale only once its last heartbeat
    is old. A sweep worker records the first heartbeat right after its ask, so a RUNNING trial without one was left
    by an ask that never finished (a worker that died or lost the database for good in the middle of it).

    Private: `optuna.storages._rdb.models` (the trial and heartbeat tables) and `_CachedStorage._backend` (the RDB
    storage `optuna.create_study` wraps). Public replacement: none (the storage API reads no heartbeat).
    """
    from optuna.storages._rdb import models
    from optuna.trial import TrialState
    from sqlalchemy import orm

    storage = study_storage(study)
    rdb = getattr(storage, "_backend", storage)
    trials, beats = models.TrialModel, models.TrialHeartbeatModel
    with orm.Session(rdb.engine) as session:
        rows = (
            session.query(trials.trial_id)
            .outerjoin(beats, beats.trial_id == trials.trial_id)
            .filter(trials.study_id == study._study_id, trials.state == TrialState.RUNNING)
            .filter(beats.trial_heartbeat_id.is_(None))
            .all()
        )
    return sorted(row.trial_id for row in rows)
