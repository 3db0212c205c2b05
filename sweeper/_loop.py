"""Keep `n_jobs` trials in flight, refilling a slot the moment its trial ends (no batch barrier).

Each slot is a thread that asks Optuna for a trial, hands it to Hydra's launcher as a batch of one and tells
Optuna the outcome. The ask (with the budget check) is serialised by a lock; launches run side by side, which
needs a launcher that runs jobs outside this process (joblib, submitit): the sweeper uses one slot for
Hydra's in-process basic launcher, whose jobs share the process's working directory and Hydra state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from optuna.trial import TrialState

from sweeper._budget import Budget
from sweeper._outcome import Outcome, describe_error, judge, log_failure, record, tell

log = logging.getLogger(__name__)

Prepare = Callable[[optuna.Trial], list[str]]
Launch = Callable[[list[str], int], JobReturn]


class TrialLoop:
    def __init__(
        self,
        study: optuna.Study,
        budget: Budget,
        distributions: dict[str, Any],
        prepare: Prepare,
        launch: Launch,
        n_workers: int,
        failures_allowed: int,
    ) -> None:
        self.study = study
        self.budget = budget
        self.distributions = distributions
        self.prepare = prepare
        self.launch = launch
        self.n_workers = n_workers
        self.failures_allowed = failures_allowed
        self.failures = 0
        self.finished: Counter[str] = Counter()
        self.stop_reason: str | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._in_flight: dict[int, optuna.Trial] = {}

    def run(self) -> None:
        """Run trials until the budget is spent or too many failed; re-raise a sweeper error from any slot."""
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
        while True:
            with self._lock:
                trial = self._next_trial()
                if trial is None:
                    return
                try:
                    overrides = self.prepare(trial)
                except BaseException:
                    self._close(trial, "the sweeper failed while preparing this trial")
                    raise
            try:
                with self._keep_alive(trial):
                    ret, error = self._launch(overrides, trial.number)
            except BaseException as e:  # KeyboardInterrupt, SystemExit from an in-process job
                self._close(trial, f"the sweep stopped while the job ran: {describe_error(e)}")
                raise
            outcome = judge(ret, error, len(self.study.directions))
            run_dir = _run_dir(ret)
            record(self.study, trial, outcome, run_dir)
            with self._lock:
                self._in_flight.pop(trial.number, None)
                self._after(trial.number, outcome)

    def _next_trial(self) -> optuna.Trial | None:
        self._before_ask()
        if self.stop_reason is not None or self.budget.left(self.study) <= 0:
            return None
        trial = self.study.ask(self.distributions)
        if not self.budget.admits(self.study, trial):
            log.info("trial %d not run: the budget was taken by other workers meanwhile", trial.number)
            self.budget.discard(self.study, trial)
            return None
        self._in_flight[trial.number] = trial
        return trial

    def _launch(self, overrides: list[str], number: int) -> tuple[JobReturn | None, BaseException | None]:
        try:
            return self.launch(overrides, number), None
        except Exception as e:  # a dead launcher or killed worker fails this trial, not the sweep
            log.debug("launcher error for trial %d", number, exc_info=True)
            return None, e

    def _before_ask(self) -> None:
        """Where stale trials of dead workers get failed (and retried) before asking (sweeps over machines)."""

    @contextlib.contextmanager
    def _keep_alive(self, trial: optuna.Trial) -> Iterator[None]:
        """Where a heartbeat for the running trial goes (sweeps over several machines)."""
        yield

    def _after(self, number: int, outcome: Outcome) -> None:
        self.finished[outcome.state.name] += 1
        if outcome.state == TrialState.FAIL:
            log_failure(number, outcome)
            self.failures += 1
            if self.failures > self.failures_allowed and self.stop_reason is None:
                self.stop_reason = (
                    f"{self.failures} trials failed, more than max_failure_rate x n_trials = {self.failures_allowed}"
                )
                log.error("Stopping the sweep: %s (last: %s).", self.stop_reason, outcome.reason)
            return
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in self.study.get_trials(deepcopy=False))
        progress = f"[{done}/{self.budget.n_trials}]"
        if outcome.state == TrialState.PRUNED:
            log.info("%s trial %d PRUNED", progress, number)
            return
        shown = outcome.values[0] if outcome.values and len(outcome.values) == 1 else outcome.values
        best = ""
        if len(self.study.directions) == 1:
            best_trial = self.study.best_trial
            best = f" (best {best_trial.value:.6g}, trial {best_trial.number})"
        log.info("%s trial %d COMPLETE: %s%s", progress, number, shown, best)

    def _close(self, trial: optuna.Trial, reason: str) -> None:
        """Fail a trial this process will not finish, so it does not hold a place in the budget."""
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


def _run_dir(ret: JobReturn | None) -> str | None:
    try:
        return str(ret.hydra_cfg.hydra.runtime.output_dir) if ret is not None and ret.hydra_cfg else None
    except Exception:
        return None
