"""The packed training loop: members join, step together, and leave one by one; the pack refills from its source.

    pack = Pack(leader_cfg)               the shared part: runtime, task and data, the frozen base, peak memory
    while members may come or are in:
        join new members from the source (each validates its untouched model alone)
        each member walks its own schedule to its next step (validating, stopping early, being pruned on the way)
        one packed step for every member with a step to take (tasks.train.pack.step)
        a member that finished, stopped early, was pruned or failed leaves; the source hears its outcome

A failure inside one member (its config, its non-finite loss, its evaluation) fails that member only; an error of
the shared step itself (out of memory) fails the members that were in it. The source (`MemberSource`) is a plain
list for a pack run directly, or the sweeper's channel for a pack launched by a sweep (`tasks.train.pack.sweep`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

import optuna
import torch
from omegaconf import DictConfig

from tasks.config.checks import check_config
from tasks.train.build import base_model, lora_settings, model_preset
from tasks.train.errors import TrialOutOfMemoryError
from tasks.train.objective import Objective
from tasks.train.pack.compat import alone_reason
from tasks.train.pack.member import Member, MemberOutcome, MemberSpec, complete, failed, join, pruned
from tasks.train.pack.step import StepItem, packed_step
from tasks.train.runtime import current_rss_mb, resolve_runtime, seed_everything
from tasks.train.trial import load_task_data

log = logging.getLogger(__name__)


class MemberSource(Protocol):
    """Where a pack's members come from and where their outcomes go."""

    def poll(self, free: int) -> list[MemberSpec]:
        """Members to start now, at most `free` (the places left in the pack)."""

    def more(self) -> bool:
        """Whether members may still come (the pack waits for them while it has none)."""

    def wait(self) -> None:
        """Block a little while the pack is empty but more members may come."""

    def done(self, spec: MemberSpec, outcome: MemberOutcome) -> None:
        """A member left the pack with this outcome."""


class ListSource:
    """The members of a fixed list, at most as many at once as the pack has places."""

    def __init__(self, specs: Iterable[MemberSpec]) -> None:
        self.queue = list(specs)
        self.outcomes: dict[str, MemberOutcome] = {}

    def poll(self, free: int) -> list[MemberSpec]:
        taken, self.queue = self.queue[:free], self.queue[free:]
        return taken

    def more(self) -> bool:
        return bool(self.queue)

    def wait(self) -> None:
        return None

    def done(self, spec: MemberSpec, outcome: MemberOutcome) -> None:
        self.outcomes[spec.key] = outcome


class Pack:
    """What a pack's members share: runtime, task and tokenized data, the frozen base (`PackedGPT`), peak memory.

    Built from the leader's config in a trial's own order (seed, data, base), so a randomly initialised base is the
    one each member would draw alone (members of such a base share the seed: `tasks.train.pack.compat`).
    """

    def __init__(self, leader: DictConfig, pack_id: str = "0") -> None:
        from model.lora import PackedGPT

        self.leader, self.pack_id = leader, pack_id
        self.preset = model_preset(leader)
        check_config(leader)
        reason = alone_reason(leader)
        if reason is not None:
            raise ValueError(f"a pack needs LoRA trials that can share a base, but got {reason}")
        self.runtime = resolve_runtime(leader.trainer.device, leader.trainer.precision)
        if leader.trainer.num_threads:
            torch.set_num_threads(leader.trainer.num_threads)
        seed_everything(leader.trainer.seed)
        if self.runtime.device.type == "cpu":
            from common.allocator import maybe_tune_malloc

            maybe_tune_malloc()  # as build_model: opt-in (LORASWEEP_MALLOC=tuned)
        objective = Objective.from_config(leader.objective)
        self.task, self.data, self.memory = load_task_data(leader, objective, self.runtime, self.preset.n_positions)
        base = base_model(leader, self.task.num_classes)
        self.rng_after_base = torch.get_rng_state()  # where a trial alone draws its adapters from
        self.pretrained = bool(leader.model.pretrained)
        base.set_gradient_checkpointing(bool(leader.trainer.grad_checkpointing))
        self.model = PackedGPT(base.to(self.runtime.device))
        self.base_mb = self._memory_now()

    def member_model(self, key: str, cfg: DictConfig) -> torch.nn.Module:
        """A member's model, its head and adapters drawn as `build_model` draws them for the trial alone: right after
        its base, i.e. from its seed (pretrained base: the head first, as `from_pretrained` draws it), or from the
        state the shared random base left (same seed)."""
        if self.pretrained:
            seed_everything(cfg.trainer.seed)
            score = None
            if self.task.num_classes:
                score = torch.empty(self.task.num_classes, self.model.base.config.n_embd).normal_(0.0, 0.02)
        else:
            torch.set_rng_state(self.rng_after_base)
            score = self.model.score_init
        return self.model.add_member(key, lora_settings(cfg), cfg.freeze.blocks, score)

    def _memory_now(self) -> float | None:
        if self.runtime.device.type == "cuda":
            return torch.cuda.memory_allocated(self.runtime.device) / 2**20
        return current_rss_mb()


def run_pack(leader: DictConfig, source: MemberSource, *, size: int, pack_id: str = "0") -> dict[str, MemberOutcome]:
    """Train the source's members, up to `size` at once, over one base built from `leader`'s config."""
    pack = Pack(leader, pack_id)
    active: dict[str, Member] = {}
    outcomes: dict[str, MemberOutcome] = {}

    def leave(spec: MemberSpec, outcome: MemberOutcome) -> None:
        if spec.key in active:
            del active[spec.key]
            pack.model.remove_member(spec.key)
        outcomes[spec.key] = outcome
        _log_outcome(spec, outcome, len(active))
        source.done(spec, outcome)

    while True:
        for spec in source.poll(size - len(active)):
            _join(pack, spec, active, leave)
        for member in active.values():
            member.share.seen(len(active))
        items = _advance(pack, active, leave)
        if items:
            _step(pack, items, leave)
        elif not active:
            if not source.more():
                break
            source.wait()
    return outcomes


def _join(pack: Pack, spec: MemberSpec, active: dict[str, Member], leave: Any) -> None:
    try:
        joined = join(pack, spec)
    except Exception as e:  # its config, its twin lookup, its model: this member only
        if spec.key in pack.model.members:
            pack.model.remove_member(spec.key)
        leave(spec, failed(e))
        return
    if isinstance(joined, MemberOutcome):  # a finished twin's result
        leave(spec, joined)
        return
    active[spec.key] = joined
    log.info("trial %s joined the pack (%d members): %s", spec.key, len(active), _describe(spec.cfg))


def _advance(pack: Pack, active: dict[str, Member], leave: Any) -> list[StepItem]:
    """Walk each member to its next step; members that finish, stop early, are pruned or fail leave."""
    items = []
    for member in list(active.values()):
        try:
            group = member.next_group(pack.runtime)
            if group is None:
                leave(member.spec, complete(pack, member))
                continue
        except optuna.TrialPruned as e:
            leave(member.spec, _safely(lambda m=member, e=e: pruned(m, e)))
            continue
        except Exception as e:
            leave(member.spec, failed(e))
            continue
        items.append(StepItem(member, group, member.lr()))
    return items


def _step(pack: Pack, items: list[StepItem], leave: Any) -> None:
    try:
        failures = packed_step(pack, items)
    except torch.OutOfMemoryError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        error = TrialOutOfMemoryError(
            f"out of memory on {pack.runtime.device} while training a pack of {len(items)} trials "
            f"(hydra.sweeper.pack.size, trainer.batch_size of each, precision={pack.runtime.precision}): {first}"
        )
        failures = {item.member.key: error for item in items}
    except Exception as e:  # the shared forward or backward: no member can be told apart
        failures = {item.member.key: e for item in items}
    for item in items:
        if item.member.key in failures:
            leave(item.member.spec, failed(failures[item.member.key]))


def _safely(make: Any) -> MemberOutcome:
    try:
        return make()
    except Exception as e:
        return failed(e)


def _describe(cfg: DictConfig) -> str:
    lora = cfg.lora
    return (
        f"rank={lora.rank} alpha={lora.alpha} targets={list(lora.targets)} freeze={cfg.freeze.blocks} "
        f"lr={cfg.optim.lr} batch={cfg.trainer.batch_size}x{cfg.trainer.grad_accum} seed={cfg.trainer.seed}"
    )


def _log_outcome(spec: MemberSpec, outcome: MemberOutcome, left: int) -> None:
    if outcome.state == "fail":
        log.warning("trial %s left the pack FAILED: %s", spec.key, outcome.reason)
    else:
        shown = f": {outcome.value}" if outcome.value is not None else ""
        log.info("trial %s left the pack %s%s (%d members left)", spec.key, outcome.state.upper(), shown, left)
