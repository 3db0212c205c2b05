"""Keep `n_jobs` trials in flight, refilling a slot the moment its trial ends (no batch barrier).

Each slot is a thread that asks Optuna for a trial, hands it to Hydra's launcher as a batch of one and tells
Optuna the outcome. The ask (with the budget check) is serialised by a lock; launches run side by side, which
needs a launcher that runs jobs outside this process (joblib, submitit): the sweeper uses one slot for
Hydra's in-process basic launcher, whose jobs share the process's working directory and Hydra state.

With several workers on one study, every trial in flight has a heartbeat, stale trials of dead workers are
failed (and queued again) before each ask, and a worker whose budget is spent waits a grace period for the
trials of other workers, so that one lost by a dead worker is still run. Every database call is retried while
the connection is lost, for up to `reconnect_timeout` seconds; then the worker stops with a clear error.

The confirmation phase runs through the same loop (same launcher, slots and heartbeats) with a `TrialSource` that
claims confirmation runs instead of asking the sampler (`sweeper._confirm_runs`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import optuna
from hydra.core.utils import JobReturn
from optuna.trial import TrialState

from sweeper._budget import Budget
from sweeper._gate import LaunchGate, broke_the_pool
from sweeper._heartbeat import WORKER, WORKER_ATTR, Heartbeat
from sweeper._isolation import JobBoundary, forget_frames
from sweeper._optuna_private import ask
from sweeper._outcome import (
    Outcome,
    describe_error,
    job_exception,
    job_run_dir,
    judge,
    log_failure,
    progress_line,
    record,
    tell,
)
from sweeper._phase import search_trials
from sweeper._settings import SweepError
from sweeper._storage import first_line, is_transient, with_retries

log = logging.getLogger(__name__)

Prepare = Callable[[optuna.Trial], list[str]]
Launch = Callable[[list[str], int], JobReturn]
T = TypeVar("T")
MAX_IDLE_POLL_S = 5.0


class TrialSource(Protocol):
    """Where a slot's next trial comes from when it is not the sampler: a trial created RUNNING for this worker."""

    def take(self) -> optuna.Trial | None: ...

    def progress(self, number: int, outcome: Outcome) -> str: ...


class TrialLoop:
    def __init__(
        self,
        study: optuna.Study,
        budget: Budget | None,
        distributions: dict[str, Any],
        prepare: Prepare,
        launch: Launch,
        n_workers: int,
        failures_allowed: int,
        heartbeat: Heartbeat,
        reconnect_timeout: float,
        storage_name: str,
        source: TrialSource | None = None,
    ) -> None:
        self.study = study
        self.source = source  # None: the search (budget and sampler)
        self.budget = budget
        self.distributions = distributions
        self.prepare = prepare
        self.launch = launch
        self.n_workers = n_workers
        self.failures_allowed = failures_allowed
        self.failures = 0
        self.last_failure: tuple[int, str] | None = None  # (trial number, "Type: message")
        self._first_with_reason: dict[str, int] = {}  # a failure's reason -> the trial that printed its traceback
        self.finished: Counter[str] = Counter()
        self.stop_reason: str | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.heartbeat = heartbeat
        self.reconnect_timeout = reconnect_timeout
        self.storage_name = storage_name  # the URL with its password hidden
        self._in_flight: dict[int, optuna.Trial] = {}
        self._gate = LaunchGate()
        self._waiting_logged = False
        self.packer: Any = None  # sweeper._pack.Packer when hydra.sweeper.pack.size > 1
        self.pending: list[tuple[optuna.Trial, list[str]]] = []  # asked for a pack they could not join: run next

    def run(self) -> None:
        """Run trials until the budget is spent or too many failed; re-raise a sweeper error from any slot."""
        self.heartbeat.start()
        try:
            self._run()
        finally:
            for trial, _ in self.pending:  # the sweep stopped before their turn
                self._close(trial, "not run: the sweep stopped before this trial's turn")
            self.pending.clear()
            self.heartbeat.stop()

    def _run(self) -> None:
        if self.n_workers == 1:  # in this thread, so Ctrl-C reaches the job and the trial is closed
            self._slot()
            return
        threads = [
            threading.Thread(target=self._guarded_slot, name=f"lorasweep-slot-{i}", daemon=True)
            for i in range(self.n_workers)
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        except KeyboardInterrupt:
            self._abandon("the sweep was interrupted (KeyboardInterrupt) before the job returned")
            raise
        if self._error is not None:
            raise self._error

    def _guarded_slot(self) -> None:
        try:
            self._slot()
        except BaseException as e:  # a sweeper error (storage, search space): stop every slot, raise in run()
            with self._lock:
                self._error = self._error or e
                self.stop_reason = self.stop_reason or describe_error(e)

    def _slot(self) -> None:
        idle_since: float | None = None
        while True:
            with self._lock:
                trial, overrides = self.pending.pop(0) if self.pending else (self._next_trial(), [])
                if trial is not None and not overrides:
                    try:
                        overrides = self._prepare(trial)
                    except BaseException:
                        self._close(trial, "the sweeper failed while preparing this trial")
                        raise
            if trial is None:
                idle_since = idle_since or time.monotonic()
                if not self._wait_for_others(idle_since):
                    return
                time.sleep(min(self.heartbeat.interval or 1, MAX_IDLE_POLL_S))
                continue
            idle_since = None
            if self.packer is not None:
                self.packer.run(self, trial, overrides)
            else:
                self.run_alone(trial, overrides)

    def run_alone(self, trial: optuna.Trial, overrides: list[str]) -> None:
        """Launch one trial's job and tell Optuna its outcome."""
        try:
            outcome, run_dir = self._run_isolated(overrides, trial.number)
        except BaseException as e:  # KeyboardInterrupt, SystemExit from an in-process job
            self._close(trial, f"the sweep stopped while the job ran: {describe_error(e)}")
            raise
        self.finish(trial, outcome, run_dir)

    def finish(self, trial: optuna.Trial, outcome: Outcome, run_dir: str | None) -> None:
        """Tell Optuna a trial's outcome and count it (a trial alone, or a member of a pack)."""
        self._record(trial, outcome, run_dir)
        with self._lock:
            self._in_flight.pop(trial.number, None)
            self._after(trial.number, outcome)

    # used by packing (sweeper/_pack.py): the loop's own ask, prepare, launch and database calls
    @property
    def lock(self) -> threading.Lock:
        return self._lock

    def next_trial(self) -> optuna.Trial | None:
        return self._next_trial()

    def prepare_trial(self, trial: optuna.Trial) -> list[str]:
        return self._prepare(trial)

    def run_pack_job(self, overrides: list[str], number: int) -> tuple[Outcome, str | None]:
        """A pack's job: its members' results come through the study, so only its failure is judged here."""
        return self._run_isolated(overrides, number, values=False)

    def db(self, action: Callable[[], T], what: str) -> T:
        return self._db(action, what)

    def close(self, trial: optuna.Trial, reason: str) -> None:
        self._close(trial, reason)

    def forget(self, trial: optuna.Trial) -> None:
        """Stop tracking a trial another worker closed meanwhile."""
        self.heartbeat.remove(trial)
        with self._lock:
            self._in_flight.pop(trial.number, None)

    def _run_isolated(self, overrides: list[str], number: int, *, values: bool = True) -> tuple[Outcome, str | None]:
        """Run the job and read its outcome and run folder. Nothing of the job outlives this call: its JobReturn
        and exception are dropped with their frames cleared, and the process's state is released before the next
        trial starts (sweeper._isolation)."""
        with JobBoundary():
            ret, error, note = self._run_job(overrides, number)
            outcome = judge(ret, error, len(self.study.directions) if values else None, note)
            run_dir = job_run_dir(ret)
            forget_frames(job_exception(ret))
            forget_frames(error)
            del ret, error
        return outcome, run_dir

    def _next_trial(self) -> optuna.Trial | None:
        self._before_ask()
        if self.stop_reason is not None:
            return None
        if self.source is not None:
            return self._take(self.source)
        assert self.budget is not None, "the search needs its budget"
        if not self._db(lambda: self.budget.runnable(self.study), "counting the study's trials"):
            return None
        # a queued retry of a dead worker's trial comes first; an attempt that lost the database after its trial was
        asked: list[int] = []  # created leaves the id here, and the next attempt goes on with that trial
        try:
            trial = self._db(lambda: ask(self.study, self.distributions, asked), "asking for a trial")
        except SweepError as e:
            raise SweepError(f"{e} {self.heartbeat.left_running()}" if asked else str(e)) from None
        self._in_flight[trial.number] = trial
        self._db(lambda: self.heartbeat.add(trial), f"starting the heartbeat of trial {trial.number}")
        if not self._db(lambda: self.budget.admits(self.study, trial), "counting the study's trials"):
            log.info("trial %d not run: the budget was taken by other workers meanwhile", trial.number)
            self._db(lambda: self.budget.discard(self.study, trial), f"closing trial {trial.number}")
            self.heartbeat.remove(trial)
            self._in_flight.pop(trial.number, None)
            return None
        self._db(lambda: trial.set_user_attr(WORKER_ATTR, WORKER), f"starting trial {trial.number}")
        return trial

    def _take(self, source: TrialSource) -> optuna.Trial | None:
        trial = self._db(source.take, "claiming a confirmation run")
        if trial is None:
            return None
        self._in_flight[trial.number] = trial
        self._db(lambda: self.heartbeat.add(trial), f"starting the heartbeat of trial {trial.number}")
        self._db(lambda: trial.set_user_attr(WORKER_ATTR, WORKER), f"starting trial {trial.number}")
        return trial

    def _prepare(self, trial: optuna.Trial) -> list[str]:
        return self._db(lambda: self.prepare(trial), f"preparing trial {trial.number}")

    def _run_job(self, overrides: list[str], number: int) -> tuple[JobReturn | None, BaseException | None, str | None]:
        """Launch the job; if the launcher's process pool broke while other launches ran, run it again alone
        (sweeper._gate): the pool may have died for another trial's job."""
        with self._gate.shared() as launch:
            ret, error = self._launch(overrides, number)
        if not broke_the_pool(error) or not launch.overlapped or self.stop_reason is not None:
            return ret, error, None
        log.warning(
            "trial %d: the launcher's process pool broke while other trials ran beside it (%s); running it again "
            "alone, to tell its own failure from another trial's",
            number,
            type(error).__name__,
        )
        with self._gate.alone():
            ret, error = self._launch(overrides, number)
        note = "run again alone, its job ended its worker process again" if broke_the_pool(error) else None
        return ret, error, note

    def _launch(self, overrides: list[str], number: int) -> tuple[JobReturn | None, BaseException | None]:
        try:
            return self.launch(overrides, number), None
        except Exception as e:  # a dead launcher or killed worker fails this trial, not the sweep
            log.debug("launcher error for trial %d", number, exc_info=True)
            return None, e

    def _record(self, trial: optuna.Trial, outcome: Outcome, run_dir: str | None) -> None:
        """Tell Optuna the outcome, retrying while the database is away; if it cannot be written, stop beating
        for the trial (so a live worker fails and re-runs it) and stop this worker with the reason."""
        try:
            stored = self._db(lambda: record(self.study, trial, outcome, run_dir), f"recording trial {trial.number}")
        except SweepError as e:
            self.heartbeat.remove(trial)
            with self._lock:
                self._in_flight.pop(trial.number, None)
            result = f"{outcome.state.name} {outcome.values or ''}".strip()
            raise SweepError(
                f"Trial {trial.number}'s result ({result}, run folder {run_dir}) could not be written: {e} "
                f"It stays RUNNING until its heartbeat is older than grace_period={self.heartbeat.grace_period} s; "
                "then a live worker (or the next run of this command) fails it and runs its parameters again."
            ) from None
        self.heartbeat.remove(trial)
        if stored != outcome.state:
            log.warning(
                "trial %d was failed by another worker while its job ran (its heartbeat did not reach the database "
                "for grace_period=%s s), so its result %s %s is not in the study; its parameters run again as a "
                "retry. Run folder: %s",
                trial.number,
                self.heartbeat.grace_period,
                outcome.state.name,
                outcome.values if outcome.values is not None else outcome.reason,
                run_dir,
            )

    def _db(self, action: Callable[[], T], what: str) -> T:
        """A database call retried with backoff while the connection is lost; then one clear error."""
        try:
            return with_retries(action, what, timeout_s=self.reconnect_timeout)
        except Exception as e:
            if not is_transient(e):
                raise
            raise SweepError(
                f"The study's database {self.storage_name} did not answer for reconnect_timeout="
                f"{self.reconnect_timeout:g} s while {what}: {first_line(e)}."
            ) from None

    def _before_ask(self) -> None:
        """Fail the trials of dead workers (their retries are queued as WAITING and asked first)."""
        self._db(self.heartbeat.fail_stale, "failing stale trials")

    def _wait_for_others(self, idle_since: float) -> bool:
        """With the budget spent, whether to wait for other workers' running trials: one whose worker died is
        failed after grace_period and queued again, and must find a live worker. Trials still beating after
        that have live workers of their own, so the wait ends after grace_period plus two heartbeats."""
        if self.stop_reason is not None or not self.heartbeat.enabled:
            return False
        running = self._db(
            lambda: self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), "counting running trials"
        )
        with self._lock:
            others = sorted(t.number for t in running if t.number not in self._in_flight)
        if not others:
            return False
        assert self.heartbeat.interval is not None
        limit = self.heartbeat.grace_period + 2 * self.heartbeat.interval
        if time.monotonic() - idle_since > limit:
            log.info("Leaving trials %s to their workers: they are alive (their heartbeats go on)", others)
            return False
        if not self._waiting_logged:
            self._waiting_logged = True
            log.info(
                "Budget taken; waiting up to %d s for trials %s of other workers: one whose worker died is failed "
                "after grace_period=%d s and run again here",
                limit,
                others,
                self.heartbeat.grace_period,
            )
        return True

    def _after(self, number: int, outcome: Outcome) -> None:
        self.finished[outcome.state.name] += 1
        if outcome.state == TrialState.FAIL:
            reason = outcome.reason or "unknown"
            first = self._first_with_reason.setdefault(reason, number)
            log_failure(number, outcome, same_as=first if first != number else None)
            self.last_failure = (number, reason)
            self.failures += 1
            if self.failures > self.failures_allowed and self.stop_reason is None:
                self.stop_reason = (
                    f"{self.failures} trials failed, more than max_failure_rate x n_trials = {self.failures_allowed}"
                )
                log.error("Stopping the sweep: %s (last: %s).", self.stop_reason, outcome.reason)
            return
        if self.source is not None:
            source = self.source
            log.info("%s", self._db(lambda: source.progress(number, outcome), "counting the confirmation runs"))
            return
        trials = search_trials(self._db(lambda: self.study.get_trials(deepcopy=False), "counting the study's trials"))
        total = self.budget.in_effect if self.budget else None
        log.info("%s", progress_line(self.study, trials, total, number, outcome))

    def _close(self, trial: optuna.Trial, reason: str) -> None:
        """Fail a trial this process will not finish, so it does not hold a place in the budget."""
        self.heartbeat.remove(trial)
        try:
            trial.set_user_attr("fail_reason", reason)
            tell(self.study, trial, TrialState.FAIL)
        except Exception as e:  # closing is best effort while the sweep is going down
            log.warning("could not close trial %d: %s", trial.number, describe_error(e))
        self._in_flight.pop(trial.number, None)

    def _abandon(self, reason: str) -> None:
        self.stop_reason = reason
        for trial in list(self._in_flight.values()):
            self._close(trial, reason)
