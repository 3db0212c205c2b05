"""A pack launched by the sweeper (`hydra.sweeper.pack.size > 1`): its members are trials of the study.

The job's own config is its leader's. Other members are the trials the sweeper assigns to the pack (now and
whenever a place frees); each one's config is composed from its overrides and it trains in its own trial folder,
reporting to its own trial (pruning, metrics); its outcome goes back to the sweeper, which tells Optuna.
`sweeper._pack_job` describes the channel; `sweep.py` calls `run_sweep_pack` when the job is a pack's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tasks.train.handle import trial_by_number
from tasks.train.pack.member import MemberOutcome, MemberSpec
from tasks.train.pack.run import run_pack

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a pack with free places looks for new members
IDLE_LIMIT_S = 600.0  # an empty pack whose sweeper never closes it (the sweeper died) ends after this


class SweepSource:
    """The pack's members as the sweeper assigns them (a `tasks.train.pack.run.MemberSource`)."""

    def __init__(self, leader: DictConfig, channel: Any, leader_dir: Path) -> None:
        self.leader, self.channel, self.leader_dir = leader, channel, leader_dir
        self._last_poll = 0.0
        self._idle_since: float | None = None

    def poll(self, free: int) -> list[MemberSpec]:
        if free <= 0 or time.monotonic() - self._last_poll < POLL_S:
            return []
        self._last_poll = time.monotonic()
        specs = []
        for number, overrides in self.channel.new_members():
            try:
                specs.append(self._spec(number, overrides))
            except Exception as e:  # its config does not compose: this member fails alone
                self.channel.report(number, _reported(MemberOutcome("fail", reason=f"{type(e).__name__}: {e}")))
        return specs

    def _spec(self, number: int, overrides: list[str]) -> MemberSpec:
        if number == self.channel.pack_id:  # the leader: the job's own config and folder
            cfg, run_dir = self.leader, self.leader_dir
        else:
            from sweeper._pack_job import compose_member

            cfg, run_dir = compose_member(overrides, number)
        return MemberSpec(str(number), cfg, trial_by_number(self.channel.study_name, number), run_dir)

    def more(self) -> bool:
        if self.channel.closed():
            return False
        self._idle_since = self._idle_since or time.monotonic()
        if time.monotonic() - self._idle_since > IDLE_LIMIT_S:
            log.warning("pack %d: no member and no word from the sweeper for %d s; ending", self.channel.pack_id,
                        IDLE_LIMIT_S)  # fmt: skip
            return False
        return True

    def wait(self) -> None:
        time.sleep(POLL_S)

    def done(self, spec: MemberSpec, outcome: MemberOutcome) -> None:
        self._idle_since = None
        self.channel.report(int(spec.key), {**_reported(outcome), "run_dir": str(spec.run_dir)})


def _reported(outcome: MemberOutcome) -> dict[str, Any]:
    """The outcome as the sweeper reads it (plain JSON values)."""
    value = outcome.value
    if isinstance(value, tuple):
        value = list(value)
    return {"state": outcome.state, "value": value, "reason": outcome.reason, "traceback": outcome.traceback}


def run_sweep_pack(cfg: DictConfig, channel: Any, run_dir: Path) -> dict[str, str]:
    """Train the pack's members; returns each member's state by trial number (the sweeper reads the study)."""
    outcomes = run_pack(cfg, SweepSource(cfg, channel, run_dir), size=channel.size, pack_id=str(channel.pack_id))
    return {key: outcome.state for key, outcome in outcomes.items()}
