"""One trial end to end: setup → fit → evaluate → record.

`run_trial(cfg)` is what `sweep.py` calls for every run, alone or inside an Optuna study. It checks the config,
loads the task's tokenized splits, builds the model (pretrained or random, LoRA or full, frozen blocks), trains with
warmup + decay, evaluates every `trainer.eval_every` steps and at each epoch end, keeps the best weights, scores
the test split (and, for alpaca, generations and the LLM judge), and writes `metrics.json` into the run folder.
Inside a sweep it reports validation values to the trial (for pruning) and attaches every metric to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tasks import Task, TaskData, get_task
from tasks.settings import check_config
from tasks.train.build import build_model, model_preset
from tasks.train.errors import out_of_memory_names_settings
from tasks.train.handle import current_trial
from tasks.train.loop import FitState, eval_batch_size, evaluate, fit, restore_best
from tasks.train.objective import Objective
from tasks.train.optim import build_optimizer
from tasks.train.record import Recorder, log_done, resolved_config, reuse
from tasks.train.reuse import find_twin
from tasks.train.runtime import PeakMemory, Runtime, resolve_runtime, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setup:
    """What a trial builds before its first step."""

    task: Task
    data: TaskData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    memory: PeakMemory
    params: tuple[int, int]  # trainable, total
    watch: Objective  # the validation metric behind early stopping and pruning


def run_trial(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the content of the run's `metrics.json`."""
    started = time.perf_counter()
    preset = model_preset(cfg)
    check_config(cfg, n_layer=preset.n_layer)
    objective = Objective.from_config(cfg.objective)
    runtime = resolve_runtime(cfg.trainer.device, cfg.trainer.precision)
    out = _run_dir(cfg, run_dir)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.trainer.seed)
    trial = current_trial()
    task, data, memory = _load(cfg, objective, runtime, preset.n_positions)
    twin = find_twin(trial, cfg, data.info)  # after the load: the data is part of the fingerprint
    if twin is not None:
        return reuse(twin, trial, out, started)

    setup = _setup(cfg, task, data, memory, objective, runtime)
    recorder = Recorder(cfg, runtime, out, started, setup.memory, setup.params, getattr(setup.data, "info", {}), trial)
    state = _fit(cfg, setup, runtime, objective, recorder)
    with out_of_memory_names_settings(cfg, runtime.device, runtime.precision, "evaluating the test split"):
        metrics = _evaluate(cfg, setup, state, runtime, objective, out)
    if cfg.trainer.save_checkpoint:
        from model.checkpoint import save_trainable

        save_trainable(setup.model, out / "checkpoint", config=resolved_config(cfg))
    result = recorder.complete(state, metrics, objective)
    log_done(result, objective, out)
    return result


def _run_dir(cfg: DictConfig, run_dir: str | Path | None) -> Path:
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.paths.output_dir
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _load(
    cfg: DictConfig, objective: Objective, runtime: Runtime, n_positions: int
) -> tuple[Task, TaskData, PeakMemory]:
    """The task and its tokenized splits; a judge objective without a key fails first, before any of it."""
    task = get_task(cfg.task)
    if task.kind == "lm":
        from tasks.judge import judge_preflight

        judge_preflight(cfg.judge, objective_needs_judge="judge" in objective.names)
    memory = PeakMemory(runtime.device)
    data = task.load(cfg.task, n_positions=n_positions, cache_dir=cfg.paths.cache_dir)
    return task, data, memory


def _setup(
    cfg: DictConfig, task: Task, data: TaskData, memory: PeakMemory, objective: Objective, runtime: Runtime
) -> Setup:
    """The model and its optimizer, on top of the loaded data."""
    from model import count_parameters

    # the validation metric behind early stopping and pruning: the objective when it is measured on the
    # validation split, else the task's own (e.g. perplexity when the objective is the end-of-trial judge)
    watch = objective if objective.on_validation else Objective.from_config(cfg.task.objective)
    model = build_model(cfg, task.num_classes, runtime)
    params = count_parameters(model)
    log.info(
        "%s %s on %s: %s trainable of %s parameters (%.2f%%), %s/%s",
        cfg.finetune.mode, cfg.model.name, task.name, f"{params[0]:,}", f"{params[1]:,}",
        100 * params[0] / params[1], runtime.device, runtime.precision,
    )  # fmt: skip
    optimizer = build_optimizer(model, cfg.optim, runtime.device)
    return Setup(task, data, model, optimizer, memory, params, watch)


def _fit(cfg: DictConfig, setup: Setup, runtime: Runtime, objective: Objective, recorder: Recorder) -> FitState:
    """Train; a pruned trial still records what it measured, one out of memory says which settings set the size."""
    import optuna

    state = FitState()
    try:
        with out_of_memory_names_settings(cfg, runtime.device, runtime.precision, "training"):
            return fit(
                setup.model, setup.task, setup.data, setup.optimizer, runtime, cfg, state=state,
                eval_key=setup.watch.keys[0], eval_direction=setup.watch.directions[0],
                report=objective.on_validation and not objective.is_multi,
            )  # fmt: skip
    except optuna.TrialPruned:
        recorder.pruned(state)
        raise


def _evaluate(
    cfg: DictConfig, setup: Setup, state: FitState, runtime: Runtime, objective: Objective, out: Path
) -> dict[str, Any]:
    """With the best weights: their validation metrics, the test split's, and for alpaca the generations + judge."""
    restore_best(setup.model, state)
    metrics: dict[str, Any] = {**state.best_metrics, "best_step": state.best_step}
    if len(setup.data.test):
        test = evaluate(setup.model, setup.task, setup.data.test, runtime, batch_size=eval_batch_size(cfg.trainer))
        metrics.update({f"test_{k}": v for k, v in test.items()})
    if setup.data.test_records:  # alpaca: generate for the test prompts, then ROUGE-L and (when enabled) the judge
        from tasks.judge import evaluate_generations

        metrics.update(
            evaluate_generations(
                setup.model,
                setup.data.test_records,
                cfg.judge,
                out,
                device=runtime.device,
                objective_needs_judge="judge" in objective.names,
                prompt_style=cfg.task.get("prompt_style", "alpaca"),
            )
        )
    return metrics
