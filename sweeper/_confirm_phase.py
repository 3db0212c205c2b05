"""The confirmation phase of a sweep, after its search: choose (`sweeper._confirm`), then run the missing runs
through the search's own loop and launcher (`sweeper._confirm_runs`), then say what came out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from sweeper._confirm import SEED_KEY, Chosen, candidates, choose, group_of, runs_of
from sweeper._confirm_runs import ConfirmSource, missing, results, wait_for_search
from sweeper._grammar import SearchSpace
from sweeper._heartbeat import Heartbeat
from sweeper._loop import Launch, Prepare, TrialLoop
from sweeper._settings import Settings, failures_allowed
from sweeper._storage import with_retries

log = logging.getLogger(__name__)


@dataclass
class ConfirmPhase:
    """What the sweeper hands the phase: the study, its settings and search space, and how to compose, prepare and
    launch a job (the search's own)."""

    study: optuna.Study
    settings: Settings
    space: SearchSpace
    compose: Callable[[optuna.trial.FrozenTrial], DictConfig]  # a search trial's job config, as its job saw it
    prepare: Prepare  # a confirmation run's job overrides
    launch: Launch
    n_workers: int
    storage_name: str
    loop: TrialLoop | None = None

    def _retried(self, action: Callable[[], Any], what: str) -> Any:
        return with_retries(action, what, timeout_s=self.settings.reconnect_timeout)

    def search_waits(self) -> bool:
        """Wait until no search trial runs; True when a queued search trial must run first."""
        return wait_for_search(self.study, self._heartbeat(), self._retried)

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(self.study, self.settings.grace_s or 0)

    def choose(self) -> list[Chosen]:
        confirm = self.settings.confirm
        trials = self._retried(lambda: self.study.get_trials(deepcopy=False), "reading the search trials")
        found, other = candidates(trials, self.space.params, self.space.recorded())
        if other:
            log.info("Confirmation leaves out trials %s: they ran with other fixed settings or search space", other)
        maximize = self.study.direction == optuna.study.StudyDirection.MAXIMIZE
        return choose(found, confirm, maximize, self._describe)

    def _describe(self, trial: optuna.trial.FrozenTrial) -> tuple[dict[str, Any], Any]:
        config = self.compose(trial)
        return group_of(config, self.settings.confirm.group_by), OmegaConf.select(config, SEED_KEY, default=None)

    def run(self) -> list[dict[str, Any]]:
        """Choose, run what is missing, and return the confirmed configurations' results."""
        confirm = self.settings.confirm
        chosen = self.choose()
        if not chosen:
            log.warning("Confirmation: no complete search trial to confirm.")
            return []
        runs = runs_of(chosen)
        trials = self._retried(lambda: self.study.get_trials(deepcopy=False), "reading the confirmation runs")
        todo = missing(runs, trials)
        log.info(
            "Confirmation: %d configuration(s) x %d seeds = %d runs (group_by=%s, top_k=%d); %d to run",
            len(chosen),
            confirm.seeds,
            len(runs),
            "/".join(confirm.group_by) or "none",
            confirm.top_k,
            len(todo),
        )
        for c in chosen:
            log.info("    %s, seeds %s", c.describe(), ", ".join(map(str, c.seeds)))
        if todo:
            self.loop = TrialLoop(
                study=self.study,
                budget=None,  # type: ignore[arg-type]  (the source decides what runs)
                distributions=self.space.distributions,
                prepare=self.prepare,
                launch=self.launch,
                n_workers=self.n_workers,
                failures_allowed=failures_allowed(self.settings, len(runs)),
                heartbeat=self._heartbeat(),
                reconnect_timeout=self.settings.reconnect_timeout,
                storage_name=self.storage_name,
                source=ConfirmSource(self.study, chosen),
            )
            self.loop.run()
        return self._retried(lambda: results(self.study, chosen), "reading the confirmation runs")
