"""Heartbeats for the trials a sweep process runs, and failing (then re-running) the trials of dead workers.

Optuna sends heartbeats only inside `study.optimize`, which a Hydra sweeper does not use. So each sweep process
keeps one thread that records a heartbeat for every trial it has in flight, every `heartbeat_interval` seconds,
and fails the trials of other workers that have been silent for `grace_period` seconds
(`optuna.storages.fail_stale_trials`, also called before each ask). `RetryStaleTrial` then queues the lost
trial's parameters as a WAITING trial, which the next `study.ask` of any live worker runs. A confirmation run is
not queued (`study.ask` would hand it to the search): the confirmation phase runs a missing run again itself.

Only RDB storages (SQLite, PostgreSQL, MySQL) have heartbeats in Optuna; with a journal file or in memory a
killed worker's trial stays RUNNING.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from sweeper._optuna_private import (
    heartbeat_enabled,
    max_retry,
    retry_history,
    running_without_heartbeat,
    study_storage,
    trial_id,
)
from sweeper._phase import confirmation_of
from sweeper._storage import first_line, is_transient, with_retries

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"  # user attribute: who ran a trial, set once its worker started it
WORKER = f"{socket.gethostname()}:{os.getpid()}"
RETRY_OF = "retry_of"  # user attribute of a re-run: the number of the trial it replaces


def quiet_heartbeat_warnings() -> None:
    """Heartbeats outside `study.optimize` are what this module is for: silence Optuna's warnings about them."""
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    names = "heartbeat_interval|fail_stale_trials|RetryHeartbeatStaleTrialCallback|retry_history"
    warnings.filterwarnings("ignore", message=f".*({names})", category=ExperimentalWarning)


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a heartbeat-stale trial, which also logs it, names the trial it replaces (`retry_of`)
    instead of copying the dead attempt's user attributes (run folder, worker), and survives a lost connection:
    the stale trial is already FAIL here, so a retry that is not written would be lost for good."""

    def __init__(self, max_retry: int | None, grace_period: int, timeout_s: float) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(max_retry=max_retry)
        self._grace_period = grace_period
        self._timeout_s = timeout_s

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        runs = len(retry_history(trial)) + 1
        who = trial.user_attrs.get(WORKER_ATTR)
        silent = f"trial {trial.number} ({who}) sent no heartbeat for grace_period={self._grace_period} s: FAIL"
        if who is None:
            silent = f"trial {trial.number} was left RUNNING by an ask that never finished (no worker took it): FAIL"
        confirmed = confirmation_of(trial)
        if confirmed is not None:
            log.warning(
                "%s; it is the confirmation run of trial %d with seed %d, which the confirmation phase of a live "
                "worker (or the next run of this command) runs again",
                silent,
                *confirmed,
            )
            return
        limit = max_retry(self)
        if limit is not None and runs > limit:
            log.warning("%s, not run again (it ran %d times, max_retry=%d)", silent, runs, limit)
            return

        def add() -> None:
            clean = copy.deepcopy(trial)  # the parent mutates the retry history it is given
            clean.user_attrs = {RETRY_OF: trial.number}
            super(RetryStaleTrial, self).__call__(study, clean)

        with_retries(add, f"queueing trial {trial.number} again", timeout_s=self._timeout_s)
        log.warning("%s; its parameters %s are queued to run again", silent, trial.params)


class Heartbeat:
    """One thread per sweep process: beats for each trial in flight, fails stale trials of dead workers."""

    def __init__(self, study: optuna.Study, grace_period: int) -> None:
        self.study = study
        storage = study_storage(study)
        self.interval: int | None = storage.get_heartbeat_interval() if heartbeat_enabled(storage) else None
        self.grace_period = grace_period
        self._trial_ids: set[int] = set()
        self._ids_lock = threading.Lock()
        self._stale_lock = threading.Lock()  # one stale check at a time in this process (SQLite reads, then writes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lorasweep-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def add(self, trial: optuna.Trial) -> None:
        """Start beating for a trial just asked: the first beat now, so a worker that dies at once is noticed."""
        if self.enabled:
            self._beat(trial_id(trial))
            with self._ids_lock:
                self._trial_ids.add(trial_id(trial))

    def remove(self, trial: optuna.Trial) -> None:
        """Stop beating: the trial is finished, or this worker gives it up (then another one fails and re-runs it)."""
        with self._ids_lock:
            self._trial_ids.discard(trial_id(trial))

    def fail_stale(self) -> None:
        """Fail the trials of dead workers (their parameters are queued again by `RetryStaleTrial`)."""
        if self.enabled:
            with self._stale_lock:
                self._adopt_orphans()
                optuna.storages.fail_stale_trials(self.study)

    def left_running(self) -> str:
        """What becomes of a trial an ask created and could not finish (the database is gone for good)."""
        if self.enabled:
            return (
                "The trial this ask created stays RUNNING without a heartbeat until a live worker (or the next run of "
                f"this command) fails it, grace_period={self.grace_period} s after first seeing it, and runs it again."
            )
        return (
            "The trial this ask created stays RUNNING and holds a place of the budget: with heartbeat_interval=null "
            "nothing fails it. Run the command again with hydra.sweeper.heartbeat_interval=60 to fail it and run it "
            "again."
        )

    def _adopt_orphans(self) -> None:
        """Give a first heartbeat to each RUNNING trial that has none and no worker: an ask that never finished left
        it (its worker died, or lost the database for good, between creating the trial and its first beat). Optuna
        never fails a trial without heartbeats, so it would stay RUNNING and hold its place in the budget for ever;
        with this beat it is stale after grace_period, failed, and its parameters run again. A trial being asked
        right now gets a beat early, which its own worker's beats then keep fresh."""
        storage = study_storage(self.study)
        for tid in running_without_heartbeat(self.study):
            if WORKER_ATTR not in storage.get_trial_user_attrs(tid):  # a worker running without heartbeats took it
                storage.record_heartbeat(tid)

    def _beat(self, tid: int) -> None:
        study_storage(self.study).record_heartbeat(tid)

    def _beat_all(self) -> None:
        with self._ids_lock:
            trial_ids = sorted(self._trial_ids)
        for tid in trial_ids:
            self._beat(tid)

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            try:
                self._beat_all()
                self.fail_stale()
            except Exception as e:  # the thread never dies: a lost connection is logged once, the next beat retries
                if not self._failing:
                    level = logging.WARNING if is_transient(e) else logging.ERROR
                    log.log(level, "heartbeat: %s (trying again every %s s)", first_line(e), self.interval)
                self._failing = True
                continue
            if self._failing:
                log.info("heartbeat: the database answers again")
            self._failing = False
