"""The confirmation phase's runs in the study: created and claimed by the study's workers, each run once.

The study is the only record of what ran: a run (search trial n, seed s) is done when a confirmation trial with that
key is COMPLETE, under way while one is RUNNING (or WAITING), missing otherwise (never created, or FAIL). So running
the command again creates only the missing runs, and every worker of a study (two processes on one database, joblib
slots, SLURM jobs) can take part:

- a worker creates a missing run's trial directly as RUNNING (`sweeper._optuna_private.create_trial`), never as a
  queued WAITING trial, which a search worker's `study.ask` would take as its own;
- then it looks at the trials numbered before its own: if one with the same key is COMPLETE, RUNNING or WAITING,
  another worker was first, and this trial is closed at once as FAIL with `lorasweep:not_run` (left out everywhere,
  as a trial that lost the race for the search budget). Trial numbers are given out one at a time by the storage,
  so of two workers creating the same run exactly one goes ahead;
- a run this worker ran and saw fail is not tried again in the same command (a rerun of the command tries it
  again); a run of a dead worker is failed by its heartbeat and then taken like a missing one.

The plan is made when the search is over: no search trial RUNNING or WAITING (`wait_for_search`), so every worker
chooses from the same finished trials.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper._budget import is_not_run
from sweeper._confirm import Chosen, Run, runs_of
from sweeper._finite import DISCARDED_ATTR
from sweeper._heartbeat import Heartbeat
from sweeper._optuna_private import create_trial, study_storage, trial_id
from sweeper._outcome import Outcome, tell
from sweeper._phase import CONFIRM_ATTR, confirmation_of, search_trials

log = logging.getLogger(__name__)

UNDER_WAY = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
LOST_RACE = "not run: another worker took this confirmation run first"
PHASE_ATTRS = ("phase", "confirms", "seed")  # the user attributes a confirmation run starts with


def _by_key(trials: Iterable[FrozenTrial]) -> dict[tuple[int, int], list[FrozenTrial]]:
    out: dict[tuple[int, int], list[FrozenTrial]] = {}
    for t in trials:
        key = confirmation_of(t)
        if key is not None and not is_not_run(t):
            out.setdefault(key, []).append(t)
    return out


def missing(runs: list[Run], trials: Iterable[FrozenTrial]) -> list[Run]:
    """The runs with no trial done or under way."""
    found = _by_key(trials)
    return [r for r in runs if not any(t.state in UNDER_WAY for t in found.get(r.key, []))]


def template(run: Run) -> FrozenTrial:
    """A RUNNING trial with the confirmed trial's parameters, marked as its confirmation run with `run.seed`."""
    number, seed = run.key
    return optuna.trial.create_trial(
        state=TrialState.RUNNING,
        params=dict(run.trial.params),
        distributions=dict(run.trial.distributions),
        user_attrs=dict(zip(PHASE_ATTRS, ("confirm", number, seed), strict=True)),
        system_attrs={CONFIRM_ATTR: {"trial": number, "seed": seed}},
    )


class ConfirmSource:
    """Hands a worker's slots the missing runs of the plan, one trial each (`sweeper._loop.TrialSource`)."""

    def __init__(self, study: optuna.Study, chosen: list[Chosen]) -> None:
        self.study = study
        self.runs = runs_of(chosen)
        self._ran: set[tuple[int, int]] = set()  # runs this worker started: a failed one is not tried again here
        self._created: tuple[Run, int] | None = None  # a run's trial (id) created by a take that lost the database

    @property
    def total(self) -> int:
        return len(self.runs)

    def missing(self) -> list[Run]:
        return missing(self.runs, self.study.get_trials(deepcopy=False))

    def take(self) -> optuna.Trial | None:
        """A new RUNNING trial for the first missing run no other worker took first; None when none is left.

        A call that lost the database after creating its trial leaves it in `_created`, and the next call (the
        loop's retry) goes on with it. Moving on would leave that trial RUNNING for ever, with no heartbeat, and its
        run would count as under way and never run.
        """
        if self._created is not None:
            trial = self._go_on(*self._created)
            if trial is not None:
                return trial
        for run in self.missing():
            if run.key in self._ran:
                continue
            self._created = (run, create_trial(self.study, template(run)))
            trial = self._go_on(*self._created)
            if trial is not None:
                return trial
        return None

    def _go_on(self, run: Run, created: int) -> optuna.Trial | None:
        """The trial just created for `run`, unless another worker took the run first (then it is closed unrun)."""
        if study_storage(self.study).get_trial(created).state != TrialState.RUNNING:
            self._created = None  # closed unrun by the call that lost the database
            return None
        trial = optuna.Trial(self.study, created)
        if self._taken_before(trial.number, run.key):
            self._close_unrun(trial)
            self._created = None
            return None
        self._ran.add(run.key)
        self._created = None
        return trial

    def _taken_before(self, number: int, key: tuple[int, int]) -> bool:
        earlier = _by_key(t for t in self.study.get_trials(deepcopy=False) if t.number < number)
        return any(t.state in UNDER_WAY for t in earlier.get(key, []))

    def _close_unrun(self, trial: optuna.Trial) -> None:
        storage, tid = study_storage(self.study), trial_id(trial)
        storage.set_trial_system_attr(tid, DISCARDED_ATTR, True)
        trial.set_user_attr("fail_reason", LOST_RACE)
        tell(self.study, trial, TrialState.FAIL)
        log.debug("trial %d not run: %s", trial.number, LOST_RACE)

    def progress(self, number: int, outcome: Outcome) -> str:
        """ "[3/6 confirmation runs] trial 14 (trial 2 with seed 1001) COMPLETE: 0.91" """
        trials = self.study.get_trials(deepcopy=False)
        found = _by_key(trials)
        done = sum(any(t.state == TrialState.COMPLETE for t in found.get(r.key, [])) for r in self.runs)
        key = next((confirmation_of(t) for t in trials if t.number == number), None)
        what = f" (trial {key[0]} with seed {key[1]})" if key else ""
        value = outcome.values[0] if outcome.values and len(outcome.values) == 1 else None
        shown = f": {value:.6g}" if value is not None else ""
        return f"[{done}/{self.total} confirmation runs] trial {number}{what} {outcome.state.name}{shown}"


Retried = Callable[[Callable[[], Any], str], Any]


def wait_for_search(
    study: optuna.Study, heartbeat: Heartbeat, retried: Callable[[Callable[[], Any], str], Any]
) -> bool:
    """Return once no search trial is RUNNING or WAITING, so the plan is made from the finished search; True when
    a search trial is queued (a dead worker's retry): the search must run again first.

    Running trials of other workers are waited for while their heartbeats go on (a dead worker's trial is failed
    after grace_period). Without heartbeats a dead worker cannot be told from a slow one: the plan is made from the
    finished trials, and the log says so.
    """
    shown = False
    while True:
        retried(heartbeat.fail_stale, "failing stale trials")
        trials = retried(lambda: study.get_trials(deepcopy=False), "counting the study's trials")
        trials = [t for t in search_trials(trials) if not is_not_run(t)]
        if any(t.state == TrialState.WAITING for t in trials):
            return True
        running = sorted(t.number for t in trials if t.state == TrialState.RUNNING)
        if not running:
            return False
        if not heartbeat.enabled:
            log.warning(
                "Search trials %s are still RUNNING and, without heartbeats, cannot be told from those of a dead "
                "worker: the configurations to confirm are chosen from the finished trials; run this command again "
                "once they end to confirm with them too",
                running,
            )
            return False
        if not shown:
            shown = True
            log.info("Waiting for search trials %s of other workers before choosing what to confirm", running)
        time.sleep(min(heartbeat.interval or 1, 5.0))


def results(study: optuna.Study, chosen: list[Chosen]) -> list[dict[str, Any]]:
    """Per confirmed configuration: its search value, and each seed's value (None when not complete)."""
    found = _by_key(study.get_trials(deepcopy=False))
    out = []
    for c in chosen:
        values: dict[int, float | None] = {}
        for seed in c.seeds:
            done = [t for t in found.get((c.trial.number, seed), []) if t.state == TrialState.COMPLETE]
            values[seed] = float(done[0].value) if done else None
        finished = [v for v in values.values() if v is not None]
        out.append(
            {
                "trial": c.trial.number,
                "group": dict(c.group),
                "search_value": float(c.trial.value),
                "values": values,
                "mean": math.fsum(finished) / len(finished) if finished else None,
                "runs": [t.number for s in c.seeds for t in found.get((c.trial.number, s), [])],
            }
        )
    return out
