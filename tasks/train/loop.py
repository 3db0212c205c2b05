"""The training loop: optimizer steps with gradient accumulation, validation, the best weights, early stop, pruning.

`fit` validates the untouched model first (step 0: the baseline every trial is compared with), runs the steps and
calls `validate` every `trainer.eval_every` steps, at each epoch end and once at the end; `validate` records the
point on the validation curve, keeps the best weights (on the CPU), reports to the sweep trial and says when to stop
early. `FitState` holds everything the loop learned, filled in place, so a pruned trial's caller still has the
curves; each optimizer step's time and tokens (evaluation excluded) feed `tasks.train.costs`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from tasks.batching import iterate_batches
from tasks.sampling import fixed_sample
from tasks.train.errors import NonFiniteLossError
from tasks.train.handle import current_trial
from tasks.train.objective import better
from tasks.train.optim import lr_at, set_lr
from tasks.train.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class FitState:
    """What the loop learned: curves, the best validation point, and counters for throughput."""

    step: int = 0
    train_tokens: int = 0
    train_time_s: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    train_curve: list[dict[str, float]] = field(default_factory=list)
    val_curve: list[dict[str, float]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)  # seconds of each optimizer step (no evaluation inside)
    step_tokens: list[int] = field(default_factory=list)  # tokens of each optimizer step


@dataclass(frozen=True)
class Validation:
    """How the loop validates: the metric it watches, its direction, where it reports, when it stops."""

    key: str
    direction: str
    batch_size: int
    max_batches: int | None
    patience: int | None
    trial: Any = None  # the sweep trial to report to (pruning), or None


def eval_batch_size(trainer: DictConfig) -> int:
    return trainer.get("eval_batch_size") or trainer.batch_size


def loss_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """How many targets a batch's loss averages over: one per row (classification) or per shifted label (LM)."""
    labels = batch["labels"]
    return int(labels.numel()) if labels.dim() == 1 else int((labels[:, 1:] != -100).sum())


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# gradients at least this large are dropped after each step instead of kept zeroed: autograd builds them as fresh
# tensors every step anyway (GPT-2's tied embedding/head: the embedding's dense backward plus the head's product),
# so a kept copy only adds its size to the next forward's peak and one more pass to add into it (BENCHMARKS.md)
_FRESH_GRAD_NUMEL = 2**24


def train_step(
    model: torch.nn.Module,
    task: Any,
    micro_batches: list[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    *,
    step: int,
    lr: float,
    grad_clip: float | None,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One optimizer step over `micro_batches` (gradient accumulation); returns the mean loss per target.

    Each micro-batch's mean loss is weighted by its share of the step's targets, so batch 8 x accum 1 and
    batch 4 x accum 2 make the same update even when the micro-batches hold different numbers of tokens.
    """
    total = sum(loss_tokens(b) for b in micro_batches)
    step_loss = 0.0
    for batch in micro_batches:
        n = loss_tokens(batch)
        if n == 0:
            continue
        with runtime.autocast():
            loss, _ = task.compute_loss(model, to_device(batch, runtime.device))
        scaled = loss * (n / total)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        step_loss += float(loss.detach()) * n / total
    apply_step(optimizer, step_loss, step=step, lr=lr, grad_clip=grad_clip, scaler=scaler)
    return step_loss


def apply_step(
    optimizer: torch.optim.Optimizer,
    step_loss: float,
    *,
    step: int,
    lr: float,
    grad_clip: float | None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """The end of an optimizer step once the gradients are in: refuse a non-finite loss, clip, set the lr, step,
    keep the gradient buffers zeroed (a packed trial calls this for its own optimizer, `tasks.train.pack`)."""
    if not math.isfinite(step_loss):
        raise NonFiniteLossError(
            f"the training loss became {step_loss} at optimizer step {step} (lr={lr:.3g}); "
            "lower optim.lr, set trainer.grad_clip, or use trainer.precision=fp32"
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    set_lr(optimizer, lr)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    # keep the gradient buffers: freeing and refaulting them every step is a first-order cost on CPU (but see above)
    optimizer.zero_grad(set_to_none=False)
    for p in params:
        if p.grad is not None and p.numel() >= _FRESH_GRAD_NUMEL:
            p.grad = None


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: Any,
    split: Any,
    runtime: Runtime,
    *,
    batch_size: int,
    max_batches: int | None = None,
) -> dict[str, float]:
    """The task's metrics on `split` in eval mode (dropout off), then back to train mode.

    `max_batches` caps the rows at `max_batches * batch_size`: a fixed sample of the split (`tasks.sampling`).
    """
    was_training = model.training
    model.eval()
    try:
        if max_batches is not None:  # a fixed sample of the whole split, not its first (shortest) batches
            split = fixed_sample(split, max_batches * batch_size)
        batches = iterate_batches(split, batch_size, shuffle=False, bucket=1)  # sorted by length: least padding
        device_batches = (to_device(b, runtime.device) for b in batches)
        with runtime.autocast():
            return {k: float(v) for k, v in task.evaluate(model, device_batches).items()}
    finally:
        model.train(was_training)


def validate(model: torch.nn.Module, task: Any, split: Any, runtime: Runtime, state: FitState, how: Validation) -> bool:
    """Evaluate on the validation split: add the point to `state`, keep the best weights, report to the sweep trial
    (which may prune: `optuna.TrialPruned`); returns True when training should stop early."""
    t = time.perf_counter()
    results = evaluate(model, task, split, runtime, batch_size=how.batch_size, max_batches=how.max_batches)
    metrics = {f"val_{k}": v for k, v in results.items()}
    state.val_curve.append({"step": state.step, **metrics})
    value = metrics[how.key]
    log.debug("step %d: %s (%.1fs)", state.step, metrics, time.perf_counter() - t)
    if better(value, state.best_value, how.direction):
        state.best_value, state.best_step, state.best_metrics = value, state.step, metrics
        state.best_state = _trainable_state(model)
        state.evals_since_best = 0
    else:
        state.evals_since_best += 1
    if how.trial is not None and state.step > 0:  # step 0 is the untouched model: nothing to prune on yet
        how.trial.report(value, state.step)
        if how.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned at step {state.step} with {how.key}={value:.4g}")
    return how.patience is not None and state.evals_since_best >= how.patience


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable tensors: the best weights so far, without holding a second model on the GPU."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def restore_best(model: torch.nn.Module, state: FitState) -> None:
    """Put the best validation point's weights back, when training moved past it."""
    if state.best_state is None or state.best_step == state.step:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.best_state.items():
            params[name].copy_(tensor)


def steps_per_epoch(n_rows: int, trainer: DictConfig) -> int:
    """Optimizer steps in one pass over `n_rows` training rows: ceil(ceil(rows / batch_size) / grad_accum)."""
    return math.ceil(math.ceil(n_rows / trainer.batch_size) / trainer.grad_accum)


def planned_steps(n_rows: int, trainer: DictConfig) -> int:
    """Optimizer steps of the whole run: epochs x steps per epoch, capped by `trainer.max_steps`."""
    total = trainer.epochs * steps_per_epoch(n_rows, trainer)
    return min(total, trainer.max_steps) if trainer.max_steps else total


def _micro_batch_groups(data: Any, trainer: DictConfig, epoch: int) -> Iterator[list[Any]]:
    """The epoch's shuffled batches, `trainer.grad_accum` at a time: one group per optimizer step."""
    batches = iter(
        iterate_batches(
            data.train, trainer.batch_size, shuffle=True, seed=trainer.seed, epoch=epoch, bucket=trainer.get("bucket")
        )
    )
    while chunk := list(islice(batches, trainer.grad_accum)):
        yield chunk


# what `fit_events` yields besides a step's micro-batches: validation is due (may stop early), the last validation
EVALUATE, FINAL = "evaluate", "final"


def fit_events(data: Any, trainer: DictConfig, state: FitState, total_steps: int) -> Iterator[list[Any] | str]:
    """The loop's order of work after the step-0 validation: the micro-batches of each optimizer step to take, and
    `EVALUATE` every `trainer.eval_every` steps and at each epoch end, `FINAL` once at the end when the last step
    was not validated yet. The caller takes each step (advancing `state.step`) before asking for the next event;
    `fit` drives it for one trial, `tasks.train.pack` for each trial of a pack."""
    last_eval_step = state.step
    for epoch in range(trainer.epochs):
        for group in _micro_batch_groups(data, trainer, epoch):
            if state.step >= total_steps:
                break
            yield group
            if trainer.eval_every and state.step % trainer.eval_every == 0:
                last_eval_step = state.step
                yield EVALUATE
        if state.step >= total_steps:
            break
        if last_eval_step != state.step:  # epoch end
            last_eval_step = state.step
            yield EVALUATE
    if last_eval_step != state.step or not state.val_curve:
        yield FINAL


def validation_of(cfg: DictConfig, eval_key: str, eval_direction: str, trial: Any) -> Validation:
    """How a trial validates: its metric and direction, evaluation size, patience, and the trial it reports to."""
    tr = cfg.trainer
    return Validation(eval_key, eval_direction, eval_batch_size(tr), tr.max_eval_batches, tr.patience, trial)


def fit(
    model: torch.nn.Module,
    task: Any,
    data: Any,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    cfg: DictConfig,
    *,
    state: FitState,
    eval_key: str,
    eval_direction: str,
    report: bool,
) -> FitState:
    """The loop: accumulate, clip, step, schedule the lr, evaluate, keep the best, stop early or prune.

    `state` is filled in place, so a caller still has the curves when the trial is pruned mid-way.
    """
    tr = cfg.trainer
    how = validation_of(cfg, eval_key, eval_direction, current_trial() if report else None)
    total_steps = planned_steps(len(data.train), tr)
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.precision == "fp16" else None
    model.train()
    validate(model, task, data.val, runtime, state, how)  # step 0: the untouched model, the trial's own baseline
    with tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True, leave=False) as bar:
        for event in fit_events(data, tr, state, total_steps):
            if event == FINAL:
                validate(model, task, data.val, runtime, state, how)
            elif event == EVALUATE:
                if validate(model, task, data.val, runtime, state, how):
                    state.stopped_early = True
                    return state
            else:
                _optimizer_step(model, task, event, optimizer, runtime, cfg, state, total_steps, scaler)
                _show(bar, state)
    return state


def _optimizer_step(
    model: torch.nn.Module,
    task: Any,
    group: list[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    cfg: DictConfig,
    state: FitState,
    total_steps: int,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """One step of the schedule: its lr, `train_step`, and the step's place on the curve and in the counters."""
    lr = step_lr(cfg, state.step, total_steps)
    t = time.perf_counter()
    loss = train_step(
        model, task, group, optimizer, runtime, step=state.step, lr=lr, grad_clip=cfg.trainer.grad_clip, scaler=scaler
    )
    record_step(state, time.perf_counter() - t, group_tokens(group), loss, lr)


def step_lr(cfg: DictConfig, step: int, total_steps: int) -> float:
    """The schedule's learning rate at optimizer step `step` of a trial's config."""
    s = cfg.schedule
    return lr_at(step, total_steps, cfg.optim.lr, s.name, s.warmup_ratio, s.get("min_lr_ratio", 0.0))


def group_tokens(group: list[Mapping[str, torch.Tensor]]) -> int:
    """The real (unpadded) tokens of a step's micro-batches: what tokens/s counts."""
    return sum(int(b["attention_mask"].sum()) for b in group)


def record_step(state: FitState, seconds: float, tokens: int, loss: float, lr: float) -> None:
    """A finished optimizer step in the counters and on the training curve."""
    state.train_time_s += seconds
    state.train_tokens += tokens
    state.step_times.append(seconds)
    state.step_tokens.append(tokens)
    state.step += 1
    state.train_curve.append({"step": state.step, "loss": loss, "lr": lr})


def _show(bar: tqdm, state: FitState) -> None:
    last = state.train_curve[-1]
    # refresh=False: the bar redraws at most every 0.1 s (tqdm's mininterval), not on every step
    bar.set_postfix(
        loss=f"{last['loss']:.4f}",
        lr=f"{last['lr']:.2e}",
        tok_s=f"{state.train_tokens / state.train_time_s:.0f}",
        refresh=False,
    )
    bar.update(1)
