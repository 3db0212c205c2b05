"""One trial end to end: setup → fit → validate → record.

`run_trial(cfg)` is what `sweep.py` calls for every run, alone or inside an Optuna study. It checks the config,
loads the task's tokenized splits, builds the model (pretrained or random, LoRA or full, frozen blocks), trains with
warmup + decay, evaluates every `trainer.eval_every` steps and at each epoch end, keeps the best weights, scores
the test split (and, for alpaca, generations and the LLM judge), and writes `metrics.json` into the run folder.
Inside a sweep it reports validation values to the trial (for pruning) and attaches every metric to it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from tasks.optim import build_optimizer, lr_at, set_lr
from tasks.runtime import PeakMemory, Runtime, code_version, resolve_runtime, seed_everything
from tasks.settings import check_config, config_fingerprint

if TYPE_CHECKING:
    from model import GPTConfig

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot recover (lower optim.lr or enable grad_clip)."""


class TrialOutOfMemoryError(RuntimeError):
    """The device ran out of memory; the message names the settings that set the memory footprint."""


# ---------------------------------------------------------------------------------------------- objective


@dataclass(frozen=True)
class Objective:
    """What the trial returns: metric names, their metrics.json keys and directions (lists for multi-objective)."""

    names: tuple[str, ...]
    keys: tuple[str, ...]
    directions: tuple[str, ...]

    @property
    def is_multi(self) -> bool:
        return len(self.names) > 1

    @classmethod
    def from_config(cls, objective: Any) -> Objective:
        from tasks.metrics import objective_direction, objective_key

        names = (
            tuple(objective) if isinstance(objective, (list, tuple)) or OmegaConf.is_list(objective) else (objective,)
        )
        names = tuple(str(n) for n in names)
        return cls(names, tuple(objective_key(n) for n in names), tuple(objective_direction(n) for n in names))

    def value(self, metrics: Mapping[str, Any]) -> float | tuple[float, ...]:
        missing = [k for k in self.keys if metrics.get(k) is None]
        if missing:
            raise KeyError(
                f"objective metric not found: {', '.join(missing)} is not among the trial's metrics "
                f"({', '.join(sorted(k for k, v in metrics.items() if v is not None))}); set `objective` to one of them"
            )
        values = tuple(float(metrics[k]) for k in self.keys)
        return values if self.is_multi else values[0]


def _better(a: float, b: float | None, direction: str) -> bool:
    if b is None:
        return True
    return a < b if direction == "minimize" else a > b


# ---------------------------------------------------------------------------------------------- setup


def build_model(cfg: DictConfig, num_classes: int | None, runtime: Runtime) -> torch.nn.Module:
    """The model a trial trains: pretrained or random GPT-2, LoRA adapters, frozen blocks, on the device."""
    from model import GPT, GPTConfig, apply_lora, freeze_blocks
    from model.allocator import maybe_tune_malloc

    if runtime.device.type == "cpu":
        maybe_tune_malloc()  # opt-in (LORASWEEP_MALLOC=tuned): see model/allocator.py and BENCHMARKS.md
    m = cfg.model
    if m.pretrained:
        if not m.hub_id:
            raise ValueError(f"model.pretrained=true needs model.hub_id, but got model.hub_id={m.hub_id!r}")
        model = GPT.from_pretrained(m.hub_id, num_classes=num_classes, revision=m.revision, dropout=m.dropout)
    else:
        model = GPT(GPTConfig.from_preset(m.preset, dropout=m.dropout, num_classes=num_classes))
    if cfg.finetune.mode == "lora":
        lora = cfg.lora
        apply_lora(
            model,
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            targets=tuple(lora.targets),
            rslora=lora.rslora,
        )
    freeze_blocks(model, cfg.freeze.blocks)
    if cfg.trainer.grad_checkpointing:
        model.set_gradient_checkpointing(True)
    model.to(runtime.device)
    if cfg.trainer.compile:
        # compile the two entry points the tasks call; the module itself stays a plain GPT for checkpoints
        model.forward = torch.compile(model.forward)
        model.lm_loss = torch.compile(model.lm_loss)
    return model


def _preset(cfg: DictConfig) -> GPTConfig:
    """The size preset of `cfg.model` (n_layer, n_positions...), known before any weights are read."""
    from model import GPTConfig

    return GPTConfig.from_preset(cfg.model.preset)


def _run_dir(cfg: DictConfig, run_dir: str | Path | None) -> Path:
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.paths.output_dir
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------- training


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


def _loss_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """How many targets a batch's loss averages over: one per row (classification) or per shifted label (LM)."""
    labels = batch["labels"]
    return int(labels.numel()) if labels.dim() == 1 else int((labels[:, 1:] != -100).sum())


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# gradients at least this large are dropped after each step instead of kept zeroed: autograd builds them as fresh
# tensors every step anyway (GPT-2's tied embedding/head: the embedding's dense backward plus the head's product,
# 38.6M values), so a kept copy only adds 154 MB to the next forward's peak and one more pass to add into it
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
    total = sum(_loss_tokens(b) for b in micro_batches)
    step_loss = 0.0
    for batch in micro_batches:
        n = _loss_tokens(batch)
        if n == 0:
            continue
        with runtime.autocast():
            loss, _ = task.compute_loss(model, _to_device(batch, runtime.device))
        scaled = loss * (n / total)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        step_loss += float(loss.detach()) * n / total
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
    return step_loss


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
    """The task's metrics on `split` in eval mode (dropout off), then back to train mode."""
    from tasks.batching import iterate_batches

    was_training = model.training
    model.eval()
    try:
        batches = iterate_batches(split, batch_size, shuffle=False, bucket=1)  # sorted by length: least padding
        if max_batches is not None:
            batches = islice(batches, max_batches)
        device_batches = (_to_device(b, runtime.device) for b in batches)
        with runtime.autocast():
            return {k: float(v) for k, v in task.evaluate(model, device_batches).items()}
    finally:
        model.train(was_training)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable tensors: the best weights so far, without holding a second model on the GPU."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def _micro_batch_groups(batches: Iterator[Any], grad_accum: int) -> Iterator[list[Any]]:
    while chunk := list(islice(batches, grad_accum)):
        yield chunk


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
    from tasks.batching import iterate_batches

    tr = cfg.trainer
    trial = _current_trial()
    n_batches = math.ceil(len(data.train) / tr.batch_size)
    steps_per_epoch = math.ceil(n_batches / tr.grad_accum)
    total_steps = tr.epochs * steps_per_epoch
    if tr.max_steps:
        total_steps = min(total_steps, tr.max_steps)
    eval_batch_size = tr.get("eval_batch_size") or tr.batch_size
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.precision == "fp16" else None

    def validate() -> bool:
        """Evaluate on the validation split; returns True when training should stop (early stopping)."""
        t = time.perf_counter()
        metrics = {
            f"val_{k}": v
            for k, v in evaluate(
                model, task, data.val, runtime, batch_size=eval_batch_size, max_batches=tr.max_eval_batches
            ).items()
        }
        state.val_curve.append({"step": state.step, **metrics})
        value = metrics[eval_key]
        log.debug("step %d: %s (%.1fs)", state.step, metrics, time.perf_counter() - t)
        if _better(value, state.best_value, eval_direction):
            state.best_value, state.best_step, state.best_metrics = value, state.step, metrics
            state.best_state = _trainable_state(model)
            state.evals_since_best = 0
        else:
            state.evals_since_best += 1
        if report and trial is not None:
            trial.report(value, state.step)
            if trial.should_prune():
                import optuna

                raise optuna.TrialPruned(f"pruned at step {state.step} with {eval_key}={value:.4g}")
        return tr.patience is not None and state.evals_since_best >= tr.patience

    model.train()
    if tr.get("eval_at_start", False):
        validate()
    bar = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True, leave=False)
    last_eval_step = state.step
    try:
        for epoch in range(tr.epochs):
            batches = iterate_batches(
                data.train, tr.batch_size, shuffle=True, seed=tr.seed, epoch=epoch, bucket=tr.get("bucket")
            )
            for group in _micro_batch_groups(iter(batches), tr.grad_accum):
                if state.step >= total_steps:
                    break
                lr = lr_at(
                    state.step,
                    total_steps,
                    cfg.optim.lr,
                    cfg.schedule.name,
                    cfg.schedule.warmup_ratio,
                    cfg.schedule.get("min_lr_ratio", 0.0),
                )
                t = time.perf_counter()
                loss = train_step(
                    model,
                    task,
                    group,
                    optimizer,
                    runtime,
                    step=state.step,
                    lr=lr,
                    grad_clip=tr.grad_clip,
                    scaler=scaler,
                )
                state.train_time_s += time.perf_counter() - t
                state.train_tokens += sum(int(b["attention_mask"].sum()) for b in group)
                state.step += 1
                state.train_curve.append({"step": state.step, "loss": loss, "lr": lr})
                # refresh=False: the bar redraws at most every 0.1 s (tqdm's mininterval), not on every step
                bar.set_postfix(
                    loss=f"{loss:.4f}",
                    lr=f"{lr:.2e}",
                    tok_s=f"{state.train_tokens / state.train_time_s:.0f}",
                    refresh=False,
                )
                bar.update(1)
                if tr.eval_every and state.step % tr.eval_every == 0:
                    last_eval_step = state.step
                    if validate():
                        state.stopped_early = True
                        return state
            if state.step >= total_steps:
                break
            if last_eval_step != state.step:  # epoch end
                last_eval_step = state.step
                if validate():
                    state.stopped_early = True
                    return state
        if last_eval_step != state.step or not state.val_curve:
            validate()
        return state
    finally:
        bar.close()


def _current_trial() -> Any:
    """The sweep trial this process runs, or None outside a sweep (or before the sweeper is installed)."""
    try:
        from sweeper import current_trial
    except ImportError:
        return None
    return current_trial()


# ---------------------------------------------------------------------------------------------- the trial


def _summary(cfg: DictConfig) -> dict[str, Any]:
    lora = cfg.finetune.mode == "lora"
    tr = cfg.trainer
    return {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "finetune": cfg.finetune.mode,
        "lora_rank": cfg.lora.rank if lora else None,
        "lora_alpha": cfg.lora.alpha if lora else None,
        "freeze_blocks": cfg.freeze.blocks,
        "optimizer": cfg.optim.name,
        "lr": cfg.optim.lr,
        "schedule": cfg.schedule.name,
        "warmup_ratio": cfg.schedule.warmup_ratio,
        "batch_size": tr.batch_size,
        "grad_accum": tr.grad_accum,
        "epochs": tr.epochs,
        "max_steps": tr.max_steps,
    }


def _resolved_config(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # an interpolation that only resolves inside a Hydra run (e.g. ${hydra:...})
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def _record(
    cfg: DictConfig,
    state: FitState,
    metrics: dict[str, Any],
    *,
    status: str,
    params: tuple[int, int],
    memory: PeakMemory,
    runtime: Runtime,
    out: Path,
    started: float,
    data_info: Mapping[str, Any],
) -> dict[str, Any]:
    """The metrics.json payload (ARCHITECTURE.md); the objective block is filled in by the caller."""
    trainable, total = params
    return {
        "status": status,
        "objective": {},
        "metrics": metrics,
        "summary": _summary(cfg),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "peak_memory_mb": memory.megabytes(),
        "peak_memory_source": memory.source,
        "wall_time_s": time.perf_counter() - started,
        "train_time_s": state.train_time_s,
        "train_tokens": state.train_tokens,
        "tokens_per_s": state.train_tokens / state.train_time_s if state.train_time_s else None,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "device": str(runtime.device),
        "precision": runtime.precision,
        "seed": cfg.trainer.seed,
        "run_dir": str(out),
        "code_version": code_version(),
        "config_fingerprint": config_fingerprint(cfg),
        "data": dict(data_info),
        "train_curve": state.train_curve,
        "val_curve": state.val_curve,
        "config": _resolved_config(cfg),
    }


def _reuse(twin: Any, trial: Any, out: Path, started: float) -> dict[str, Any]:
    """Record an equivalent finished trial's result as this trial's, without training (see `config_fingerprint`)."""
    source = Path(str(twin.user_attrs.get("run_dir", ""))) / "metrics.json"
    if source.is_file():
        result = json.loads(source.read_text())
    else:  # the twin ran on another machine: what the study holds is what is known
        values = twin.values if len(twin.values) > 1 else twin.values[0]
        result = {**twin.user_attrs, "objective": {"name": twin.user_attrs.get("objective_name"), "value": values}}
    result.update(status="duplicate", duplicate_of=twin.number, run_dir=str(out))
    result["reuse_time_s"] = time.perf_counter() - started
    _write_json(out / "metrics.json", result)
    trial.set_metrics(result)
    log.info(
        "trial %d has the same effective config as finished trial %d: its result is reused, nothing trained → %s",
        trial.number, twin.number, out / "metrics.json",
    )  # fmt: skip
    return result


def run_trial(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the content of the run's `metrics.json`."""
    import optuna

    from model import count_parameters
    from tasks import get_task

    started = time.perf_counter()
    preset = _preset(cfg)
    check_config(cfg, n_layer=preset.n_layer)
    objective = Objective.from_config(cfg.objective)
    runtime = resolve_runtime(cfg.trainer.device, cfg.trainer.precision)
    out = _run_dir(cfg, run_dir)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.trainer.seed)

    trial = _current_trial()
    fingerprint = config_fingerprint(cfg)
    if trial is not None:
        twin = trial.find_complete("config_fingerprint", fingerprint)
        if twin is not None:
            return _reuse(twin, trial, out, started)

    task = get_task(cfg.task)
    needs_judge = "judge" in objective.names
    if task.kind == "lm":
        from tasks.judge import judge_preflight

        judge_preflight(cfg.judge, objective_needs_judge=needs_judge)  # a missing key fails now, not after training
    # the validation metric behind early stopping and pruning: the objective when it is measured on the
    # validation split, else the task's own (e.g. perplexity when the objective is the end-of-trial judge)
    report = not objective.is_multi and objective.keys[0].startswith("val_")
    eval_on = objective if objective.keys[0].startswith("val_") else Objective.from_config(cfg.task.objective)
    memory = PeakMemory(runtime.device)
    data = task.load(cfg.task, n_positions=preset.n_positions, cache_dir=cfg.paths.cache_dir)
    data_info = getattr(data, "info", {})
    model = build_model(cfg, task.num_classes, runtime)
    params = count_parameters(model)
    log.info(
        "%s %s on %s: %s trainable of %s parameters (%.2f%%), %s/%s",
        cfg.finetune.mode,
        cfg.model.name,
        task.name,
        f"{params[0]:,}",
        f"{params[1]:,}",
        100 * params[0] / params[1],
        runtime.device,
        runtime.precision,
    )
    optimizer = build_optimizer(model, cfg.optim, runtime.device)
    state = FitState()
    try:
        state = fit(
            model,
            task,
            data,
            optimizer,
            runtime,
            cfg,
            state=state,
            eval_key=eval_on.keys[0],
            eval_direction=eval_on.directions[0],
            report=report,
        )
    except optuna.TrialPruned:
        # keep what the pruned trial measured: curves, memory, throughput
        pruned = _record(
            cfg,
            state,
            dict(state.best_metrics),
            status="pruned",
            params=params,
            memory=memory,
            runtime=runtime,
            out=out,
            started=started,
            data_info=data_info,
        )
        _write_json(out / "metrics.json", pruned)
        if trial is not None:
            trial.set_metrics(pruned)
        raise
    except torch.OutOfMemoryError as exc:
        raise TrialOutOfMemoryError(
            f"out of memory on {runtime.device} with model={cfg.model.name} finetune={cfg.finetune.mode} "
            f"trainer.batch_size={cfg.trainer.batch_size} task.max_length={cfg.task.get('max_length')} "
            f"precision={runtime.precision} grad_checkpointing={cfg.trainer.grad_checkpointing}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc

    # the rest of the trial uses the best weights
    if state.best_state is not None and state.best_step != state.step:
        _restore(model, state.best_state)
    metrics: dict[str, Any] = {**state.best_metrics, "best_step": state.best_step}
    eval_batch_size = cfg.trainer.get("eval_batch_size") or cfg.trainer.batch_size
    if len(data.test):
        test = evaluate(model, task, data.test, runtime, batch_size=eval_batch_size)
        metrics.update({f"test_{k}": v for k, v in test.items()})
    if data.test_records:  # alpaca: generate for the test prompts, then ROUGE-L and (when enabled) the judge
        from tasks.judge import evaluate_generations

        metrics.update(
            evaluate_generations(
                model,
                data.test_records,
                cfg.judge,
                out,
                device=runtime.device,
                objective_needs_judge=needs_judge,
                prompt_style=cfg.task.get("prompt_style", "alpaca"),
            )
        )
    if cfg.trainer.save_checkpoint:
        from model.checkpoint import save_trainable

        save_trainable(model, out / "checkpoint", config=_resolved_config(cfg))

    result = _record(
        cfg,
        state,
        metrics,
        status="complete",
        params=params,
        memory=memory,
        runtime=runtime,
        out=out,
        started=started,
        data_info=data_info,
    )
    flat = {**metrics, **{k: v for k, v in result.items() if not isinstance(v, (dict, list))}}
    value = objective.value(flat)
    values = value if isinstance(value, tuple) else (value,)
    one = not objective.is_multi
    result["objective"] = {
        "name": objective.names[0] if one else list(objective.names),
        "key": objective.keys[0] if one else list(objective.keys),
        "direction": objective.directions[0] if one else list(objective.directions),
        "value": values[0] if one else list(values),
    }
    _write_json(out / "metrics.json", result)
    if trial is not None:
        trial.set_metrics(result)
    log.info(
        "trial done: %s (best step %s of %d) · %.2f%% trainable · peak %.0f MB · %.0f tokens/s · %.1fs → %s",
        ", ".join(f"{n}={v:.4g}" for n, v in zip(objective.names, values, strict=True)),
        state.best_step,
        state.step,
        result["trainable_pct"],
        result["peak_memory_mb"],
        result["tokens_per_s"] or 0,
        result["wall_time_s"],
        out / "metrics.json",
    )
    return result
