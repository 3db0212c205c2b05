"""The sweeper's side of packing (`hydra.sweeper.pack.size=K`): asking for a pack, launching it, refilling it.

A slot that asked a trial the app can pack (its `pack_key`, registered with `set_pack_key`, is not None) asks for up
to K-1 more with the same key, through the loop's own ask (`TrialLoop._next_trial`: the budget, heartbeats, the
worker attribute) and prepare (`_prepare`: recorded values, pruner groups), and launches ONE job for them through
the same launcher: the leader's overrides plus `LORASWEEP_PACK`. While that job runs, a thread of this slot
(`PackLaunch._serve`) reads the members' outcomes from the study (`sweeper._pack_job` describes the channel), tells
Optuna each one (`TrialLoop._finish`: the same recording, progress and failure count as a trial alone) and, while
the budget allows, asks a new member for each free place. A trial asked with another key (e.g. `finetune=full`
in a search over both) is not added: it waits as pending and the next free slot runs it, alone or leading a pack,
and the pack is closed (no more members; the job ends when its members do). The sweeper stays the only one that
asks Optuna, so the sampler (and its seed per trial), the finite-space and grid bookkeeping and the budget work as
without packing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from sweeper._grammar import SearchSpace, format_value
from sweeper._optuna_private import study_id, study_storage, trial_id
from sweeper._outcome import Outcome, describe_error, from_values
from sweeper._pack_job import (
    CLOSED_ATTR,
    COMPOSE_LOCK,
    ENV_PACK,
    OUTCOME_ATTR,
    OVERRIDES_ATTR,
    PACK_ATTR,
    registered_pack_key,
    task_overrides,
)
from sweeper._preflight import probe_values

if TYPE_CHECKING:
    from sweeper._loop import TrialLoop

log = logging.getLogger(__name__)

POLL_S = 0.5
# launchers whose jobs get Hydra's state (config loader, HydraConfig) and so can compose their members' configs
PACKING_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher", "SlurmLauncher")


class Packer:
    """How this sweep packs: the size K and the app's key of an overrides list (composed as the job will be)."""

    def __init__(self, size: int, key_of: Callable[[list[str]], str | None]) -> None:
        self.size, self._key_of = size, key_of

    def key_of(self, loop: TrialLoop, overrides: list[str]) -> str | None:
        """The trial's pack key; None (it runs alone, and its own job reports what is wrong) when its config does
        not compose or the app's key refuses it. Composed under the loop's lock, as `_prepare` composes, and the
        lock an in-process job composes under."""
        try:
            with loop.lock, COMPOSE_LOCK:
                return self._key_of(overrides)
        except Exception as e:
            log.debug("no pack key for %s: %s", overrides, describe_error(e))
            return None

    def run(self, loop: TrialLoop, trial: optuna.Trial, overrides: list[str]) -> None:
        """Run `trial` alone, or as the leader of a pack of trials with its key."""
        key = self.key_of(loop, overrides)
        if key is None:
            loop.run_alone(trial, overrides)
            return
        launch = PackLaunch(loop, self, key, trial, overrides)
        launch.gather()
        launch.run()


class PackLaunch:
    """One pack on the sweeper's side: its members, the job, the thread that serves it while it runs."""

    def __init__(self, loop: TrialLoop, packer: Packer, key: str, leader: optuna.Trial, overrides: list[str]) -> None:
        self.loop, self.packer, self.key = loop, packer, key
        self.pack_id = leader.number
        self.leader_overrides = overrides
        self.members: dict[int, optuna.Trial] = {}
        self.done: set[int] = set()
        self.closed = False
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._assign(leader, overrides)

    @property
    def in_flight(self) -> int:
        return len(self.members) - len(self.done)

    def gather(self) -> None:
        """Ask for members until the pack is full, the budget is spent or a trial with another key comes."""
        while self.in_flight < self.packer.size and self._add_one():
            pass

    def run(self) -> None:
        log.info("pack %d: trials %s in one job (pack.size=%d)", self.pack_id, sorted(self.members), self.packer.size)
        thread = threading.Thread(target=self._serve, name=f"lorasweep-pack-{self.pack_id}", daemon=True)
        thread.start()
        overrides = [*self.leader_overrides, f"++hydra.job.env_set.{ENV_PACK}={format_value(self.pack_id)}"]
        try:
            outcome, run_dir = self.loop.run_pack_job(overrides, self.pack_id)
        except BaseException as e:  # KeyboardInterrupt, SystemExit from an in-process job
            self._stop.set()
            thread.join()
            reason = f"the sweep stopped while the pack's job ran: {describe_error(e)}"
            self._end(Outcome(TrialState.FAIL, reason=reason))
            raise
        self._stop.set()
        thread.join()
        self._collect()  # outcomes the job wrote just before it ended
        self._end(outcome, run_dir)
        if self._error is not None:
            raise self._error

    def _end(self, job: Outcome, run_dir: str | None = None) -> None:
        """Close the pack; members without an outcome fail with the job's reason."""
        self._close()
        if job.state == TrialState.FAIL:
            reason, trace = f"the pack's job failed: {job.reason}", job.traceback
        else:
            reason, trace = "the pack's job ended without a result for this trial", None
        for number, trial in self.members.items():
            if number not in self.done:
                self.done.add(number)
                self.loop.finish(trial, Outcome(TrialState.FAIL, reason=reason, traceback=trace), run_dir)

    def _serve(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._collect()
                if not self.closed:
                    self.gather()
                    if self.in_flight < self.packer.size:  # the budget, or another base, stopped the refill
                        self._close()
            except BaseException as e:  # a sweeper error (storage): stop refilling, raise in the slot
                self._error = self._error or e
                self._close()
                return

    def _collect(self) -> None:
        """Tell Optuna the outcome of each member the job reported."""
        storage = study_storage(self.loop.study)
        for number, trial in list(self.members.items()):
            if number in self.done:
                continue
            frozen = self.loop.db(lambda t=trial: storage.get_trial(trial_id(t)), f"reading trial {number}")
            data = frozen.system_attrs.get(OUTCOME_ATTR)
            if data is None and frozen.state == TrialState.RUNNING:
                continue
            self.done.add(number)
            if data is None:  # failed elsewhere meanwhile (a lapsed heartbeat): not ours to tell
                self.loop.forget(trial)
                continue
            outcome = _outcome(data, len(self.loop.study.directions))
            self.loop.finish(trial, outcome, data.get("run_dir"))

    def _add_one(self) -> bool:
        """Ask one more member; False (and the pack closes) when none can come."""
        loop = self.loop
        if loop.stop_reason is not None:
            return False
        with loop.lock:
            trial = loop.next_trial()
            if trial is None:
                return False
            try:
                with COMPOSE_LOCK:
                    overrides = loop.prepare_trial(trial)
            except BaseException:
                loop.close(trial, "the sweeper failed while preparing this trial")
                raise
        key = self.packer.key_of(loop, overrides)
        if key != self.key:
            with loop.lock:
                loop.pending.append((trial, overrides))
            log.info("trial %d cannot join pack %d (another base): it runs after it", trial.number, self.pack_id)
            return False
        self._assign(trial, overrides)
        return True

    def _assign(self, trial: optuna.Trial, overrides: list[str]) -> None:
        storage, tid = study_storage(self.loop.study), trial_id(trial)

        def write() -> None:
            storage.set_trial_system_attr(tid, OVERRIDES_ATTR, task_overrides(overrides))
            storage.set_trial_system_attr(tid, PACK_ATTR, self.pack_id)

        self.loop.db(write, f"assigning trial {trial.number} to pack {self.pack_id}")
        self.members[trial.number] = trial

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        storage, sid = study_storage(self.loop.study), study_id(self.loop.study)
        self.loop.db(lambda: storage.set_study_system_attr(sid, CLOSED_ATTR.format(self.pack_id), True), "closing")


def _outcome(data: dict[str, Any], n_objectives: int) -> Outcome:
    state = data.get("state")
    if state == "complete":
        return from_values(data.get("value"), n_objectives)
    if state == "pruned":
        return Outcome(TrialState.PRUNED)
    return Outcome(TrialState.FAIL, reason=data.get("reason") or "unknown", traceback=data.get("traceback"))


def check_packing(size: int, launcher: Any, storage_url: str | None, probes: list[Any]) -> Callable[..., Any] | None:
    """Refuse, in one line before any trial, packing that cannot work; the app's key and reason functions when it
    can. `probes` are composed job configs of the search space (each categorical choice, each range end)."""
    if size <= 1:
        return None
    registered = registered_pack_key()
    if registered is None:
        raise ValueError(
            f"`pack.size` > 1 needs an app that says which trials can share a job (sweeper.set_pack_key), "
            f"but got pack.size={size} and none registered; set hydra.sweeper.pack.size=1"
        )
    name = type(launcher).__name__
    if name not in PACKING_LAUNCHERS:
        raise ValueError(
            f"`pack.size` > 1 needs a launcher whose jobs get Hydra's config loader to compose their members "
            f"({', '.join(PACKING_LAUNCHERS)}), but got pack.size={size} with {name}; set hydra.sweeper.pack.size=1"
        )
    if storage_url is None and name != "BasicLauncher":
        raise ValueError(
            f"`pack.size` > 1 needs a study its jobs can reach, but got storage=null (kept in this process) with "
            f"{name}; set hydra.sweeper.storage=sqlite:///sweeps.db"
        )
    key, why_alone = registered
    if all(key(cfg) is None for cfg in probes):
        reason = why_alone(probes[0]) if probes else None
        raise ValueError(
            f"`pack.size` > 1 packs trials that can share a base, but no trial of this search space can"
            f"{f' ({reason})' if reason else ''}; set hydra.sweeper.pack.size=1, got pack.size={size}"
        )
    return key


def probe_overrides(space: SearchSpace) -> list[list[str]]:
    """The overrides of the first value of every parameter, and of each other categorical choice or range end, one
    parameter at a time: the trials `check_packing` asks the app about (as the preflight check does)."""
    first = {name: probe_values(p.distribution)[0] for name, p in space.params.items()}
    probes = [first]
    for name, param in space.params.items():
        probes += [{**first, name: value} for value in probe_values(param.distribution)[1:]]
    return [space.overrides(values) for values in probes]
