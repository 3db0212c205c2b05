"""One trial inside a pack: how it joins, advances through its own schedule, and leaves with its own record.

A member owns everything a trial alone owns but the base: its config, sweep trial, run folder, model (a `GPT`
whose base tensors are the pack's: `model.lora.PackedGPT.add_member`), optimizer (LoRA+ groups included), gradient
scaler, data order (its seed), schedule, `FitState`, validation (cadence, patience, pruning) and `Recorder`. It
validates and evaluates alone, through the same functions as a trial alone (`tasks.train.loop.validate`,
`tasks.train.trial.finish`); only its training steps are packed (`tasks.train.pack.step`).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tasks.config.checks import check_config
from tasks.train.costs import machine_load
from tasks.train.loop import (
    EVALUATE,
    FINAL,
    FitState,
    Validation,
    fit_events,
    planned_steps,
    step_lr,
    validate,
    validation_of,
)
from tasks.train.objective import Objective
from tasks.train.pack.compat import alone_reason, differences
from tasks.train.pack.record import MemberRecorder, PackShare
from tasks.train.record import reuse
from tasks.train.reference import references
from tasks.train.reuse import find_twin
from tasks.train.trial import Setup, finish, trial_optimizer, validation_prompts_of, watched

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberSpec:
    """A trial to run in a pack: a key unique in the pack, its composed config, its sweep trial (or None), its
    run folder."""

    key: str
    cfg: DictConfig
    trial: Any
    run_dir: Path


@dataclass(frozen=True)
class MemberOutcome:
    """How a member left the pack: `complete` (or a reused twin's result), `pruned` or `fail`, as plain values."""

    state: str
    value: Any = None  # the objective value(s) of a complete trial
    reason: str | None = None  # why it failed: "Type: message"
    traceback: str | None = None
    result: dict[str, Any] | None = None  # its metrics.json content, when it wrote one


@dataclass
class Member:
    """A trial being trained in a pack (module docstring)."""

    spec: MemberSpec
    setup: Setup
    objective: Objective
    recorder: MemberRecorder
    share: PackShare
    how: Validation
    total_steps: int
    scaler: torch.amp.GradScaler | None
    state: FitState = field(default_factory=FitState)
    events: Iterator[Any] | None = None

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def cfg(self) -> DictConfig:
        return self.spec.cfg

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.setup.optimizer

    def validate(self, runtime: Any) -> bool:
        """Validate alone (may raise optuna.TrialPruned); True when patience says stop."""
        return validate(self.setup.model, self.setup.task, self.setup.data.val, runtime, self.state, self.how)

    def next_group(self, runtime: Any) -> list[Any] | None:
        """The micro-batches of its next optimizer step, validating on the way as its schedule says; None when it
        is done (its steps ran out, or patience stopped it)."""
        assert self.events is not None
        for event in self.events:
            if event == FINAL:
                self.validate(runtime)
            elif event == EVALUATE:
                if self.validate(runtime):
                    self.state.stopped_early = True
                    return None
            else:
                return event
        return None

    def lr(self) -> float:
        return step_lr(self.cfg, self.state.step, self.total_steps)


def join(pack: Any, spec: MemberSpec) -> Member | MemberOutcome:
    """Set a trial up inside the pack and validate its untouched model (step 0); a finished twin's result is taken
    instead (`trainer.reuse`), and a config that cannot join fails this trial alone."""
    started, load_start = time.perf_counter(), machine_load("start")
    cfg = spec.cfg
    check_config(cfg)
    reason = alone_reason(cfg)
    different = differences(pack.leader, cfg)
    if reason or different:
        raise ValueError(
            f"a pack member must be able to share the pack's base, but got {reason or '; '.join(different)}"
        )
    objective = Objective.from_config(cfg.objective)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    twin = find_twin(spec.trial, cfg, pack.data.info)
    if twin is not None:
        result = reuse(twin, spec.trial, spec.run_dir, started)
        return MemberOutcome("complete", value=result["objective"]["value"], result=result)
    watch = watched(cfg, objective)
    prompts = validation_prompts_of(pack.task, pack.data, objective)
    model = pack.member_model(spec.key, cfg)
    from model import count_parameters

    params = count_parameters(model)
    setup = Setup(pack.task, pack.data, model, trial_optimizer(cfg, model, pack.runtime.device), pack.memory,
                  params, watch, prompts)  # fmt: skip
    share = PackShare(pack.pack_id, pack.memory, pack.base_mb)
    recorder = MemberRecorder(cfg, pack.runtime, spec.run_dir, started, pack.memory, params, pack.data.info,
                              spec.trial, load_start, share=share)  # fmt: skip
    report = objective.on_validation and not objective.is_multi
    tr = cfg.trainer
    how = validation_of(cfg, watch.keys[0], watch.directions[0], spec.trial if report else None)
    scaler = torch.amp.GradScaler(pack.runtime.device.type) if pack.runtime.precision == "fp16" else None
    member = Member(spec, setup, objective, recorder, share, how, planned_steps(len(pack.data.train), tr), scaler)
    model.train()
    member.validate(pack.runtime)  # step 0: the untouched model, the trial's own baseline
    member.events = fit_events(pack.data, tr, member.state, member.total_steps)
    return member


def complete(pack: Any, member: Member) -> MemberOutcome:
    """Evaluate the best weights, write metrics.json and report, as a trial alone ends (`tasks.train.trial.finish`)."""
    result = finish(member.cfg, member.setup, member.state, pack.runtime, member.objective, member.spec.run_dir,
                    member.recorder)  # fmt: skip
    return MemberOutcome("complete", value=result["objective"]["value"], result=result)


def pruned(member: Member, error: BaseException) -> MemberOutcome:
    """Record what a pruned member measured (curves, memory, throughput), as a pruned trial alone does."""
    result = member.recorder.pruned(member.state, references(member.setup.data, member.state))
    return MemberOutcome("pruned", reason=str(error), result=result)


def failed(error: BaseException) -> MemberOutcome:
    """A member that failed: the reason (as the sweeper records a failed job's) and its traceback."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
    return MemberOutcome("fail", reason=f"{type(error).__name__}: {error}".strip().rstrip(":"), traceback=text)
