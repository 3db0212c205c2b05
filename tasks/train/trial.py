"""One trial end to end: setup → fit → evaluate → record.

`run_trial(cfg)` is what `sweep.py` calls for every run, alone or inside an Optuna study. It checks the config,
loads the task's tokenized splits, builds the model (pretrained or random, LoRA or full, frozen blocks), trains with
warmup + decay, evaluates every `trainer.eval_every` steps and at each epoch end, keeps the best weights, scores
the test split (and, for alpaca, generations and the LLM judge on a fixed validation subset; on the test prompts only
in a confirmation run, `trainer.phase=confirm`), and writes `metrics.json` into the run folder. Inside a sweep it
reports validation values to the trial (for pruning) and attaches every metric to it.
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
from tasks.config.checks import check_config
from tasks.train.build import build_model, model_preset
from tasks.train.costs import machine_load
from tasks.train.errors import out_of_memory_names_settings
from tasks.train.handle import current_trial
from tasks.train.loop import FitState, eval_batch_size, evaluate, fit, restore_best
from tasks.train.objective import Objective
from tasks.train.optim import build_optimizer
from tasks.train.record import Recorder, log_done, resolved_config, reuse
from tasks.train.reference import judged, references
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
    val_prompts: list[dict[str, str]] | None  # alpaca: the validation rows generated for (and judged)


def run_trial(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the content of the run's `metrics.json`."""
    started = time.perf_counter()
    load_start = machine_load("start")
    check_config(cfg)
    preset = model_preset(cfg)
    objective = Objective.from_config(cfg.objective)
    runtime = resolve_runtime(cfg.trainer.device, cfg.trainer.precision)
    out = _run_dir(cfg, run_dir)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.trainer.seed)
    trial = current_trial()
    task, data, memory = load_task_data(cfg, objective, runtime, preset.n_positions)
    twin = find_twin(trial, cfg, data.info)  # after the load: the data is part of the fingerprint
    if twin is not None:
        return reuse(twin, trial, out, started)

    setup = _setup(cfg, task, data, memory, objective, runtime)
    info = getattr(setup.data, "info", {})
    recorder = Recorder(cfg, runtime, out, started, setup.memory, setup.params, info, trial, load_start)
    state = _fit(cfg, setup, runtime, objective, recorder)
    return finish(cfg, setup, state, runtime, objective, out, recorder)


def finish(
    cfg: DictConfig,
    setup: Setup,
    state: FitState,
    runtime: Runtime,
    objective: Objective,
    out: Path,
    recorder: Recorder,
) -> dict[str, Any]:
    """After training: the best weights' validation and test metrics (and generations), the references, the
    checkpoint and metrics.json; a packed trial ends the same way (`tasks.train.pack`)."""
    with out_of_memory_names_settings(cfg, runtime.device, runtime.precision, "evaluating and generating"):
        metrics = _evaluate(cfg, setup, state, runtime, objective, out)
    metrics.update(references(setup.data, state))
    metrics.update(judged(metrics, setup.data, setup.watch))
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


def load_task_data(
    cfg: DictConfig, objective: Objective, runtime: Runtime, n_positions: int
) -> tuple[Task, TaskData, PeakMemory]:
    """The task and its tokenized splits; a judge objective without a key fails first, before any of it."""
    task = get_task(cfg.task)
    if task.kind == "lm":
        from tasks.judge import judge_preflight

        judge_preflight(cfg.judge, objective_needs_judge=objective.needs_judge)
    memory = PeakMemory(runtime.device)
    data = task.load(cfg.task, n_positions=n_positions, cache_dir=cfg.paths.cache_dir)
    return task, data, memory


def _setup(
    cfg: DictConfig, task: Task, data: TaskData, memory: PeakMemory, objective: Objective, runtime: Runtime
) -> Setup:
    """The validation prompts, the model and its optimizer, on top of the loaded data."""
    from model import count_parameters

    watch = watched(cfg, objective)
    val_prompts = validation_prompts_of(task, data, objective)
    model = build_model(cfg, task.num_classes, runtime)
    params = count_parameters(model)
    log.info(
        "%s %s on %s: %s trainable of %s parameters (%.2f%%), %s/%s",
        cfg.finetune.mode, cfg.model.name, task.name, f"{params[0]:,}", f"{params[1]:,}",
        100 * params[0] / params[1], runtime.device, runtime.precision,
    )  # fmt: skip
    optimizer = trial_optimizer(cfg, model, runtime.device)
    return Setup(task, data, model, optimizer, memory, params, watch, val_prompts)


def trial_optimizer(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The trial's optimizer over its trainable tensors, with LoRA+ groups (`lora.lr_ratio`); a packed trial builds
    its own here too (`tasks.train.pack`), so it trains as it would alone."""
    lr_ratio = cfg.lora.lr_ratio if cfg.finetune.mode == "lora" else 1.0  # LoRA+: B learns lr_ratio x faster
    return build_optimizer(model, cfg.optim, device, lr_ratio=lr_ratio)


def watched(cfg: DictConfig, objective: Objective) -> Objective:
    """The validation metric behind early stopping and pruning: the objective when it is measured on the
    validation split, else the task's own (e.g. perplexity when the objective is the end-of-trial judge)."""
    return objective if objective.on_validation else Objective.from_config(cfg.task.objective)


def validation_prompts_of(task: Task, data: TaskData, objective: Objective) -> list[dict[str, str]] | None:
    """The fixed validation subset a trial generates for (`task.val_generate_size`); None when nothing is generated.

    An objective measured on generations (`judge`, `rouge_l`) without them fails here, before the model is built.
    """
    size = task.settings.get("val_generate_size") or 0
    if data.val_records is not None and size:
        from tasks.alpaca import validation_prompts

        return validation_prompts(data.val_records, size, task.settings["seed"])
    if objective.needs_generations:
        why = "task.val_generate_size=0" if data.val_records is not None else f"task {task.name} generates nothing"
        raise ValueError(
            f"objective={','.join(objective.names)} is measured on generations for validation prompts, but {why}; "
            "set task.val_generate_size > 0 (alpaca) or pick a validation-loop objective"
        )
    return None


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
        recorder.pruned(state, references(setup.data, state))
        raise


def _evaluate(
    cfg: DictConfig, setup: Setup, state: FitState, runtime: Runtime, objective: Objective, out: Path
) -> dict[str, Any]:
    """With the best weights: their validation metrics, the test split's, and for alpaca the generations + judge on
    the validation subset (and, in a confirmation run only, on the test prompts)."""
    restore_best(setup.model, state)
    metrics: dict[str, Any] = {**state.best_metrics, "best_step": state.best_step}
    if len(setup.data.test):
        test = evaluate(setup.model, setup.task, setup.data.test, runtime, batch_size=eval_batch_size(cfg.trainer))
        metrics.update({f"test_{k}": v for k, v in test.items()})
    generated = {"val": setup.val_prompts}
    if cfg.trainer.get("phase", "search") == "confirm":
        generated["test"] = setup.data.test_records
    for split, records in generated.items():
        if records:  # alpaca: generate, then ROUGE-L / exact match and (when enabled) the judge
            metrics.update(_generations(cfg, setup, runtime, objective, out, records, split))
    return metrics


def _generations(
    cfg: DictConfig, setup: Setup, runtime: Runtime, objective: Objective, out: Path, records: list, split: str
) -> dict[str, Any]:
    """One split's generations and their scores, under the split's metric names (`val_rouge_l`, `test_judge_mean`)."""
    from tasks.judge import evaluate_generations
    from tasks.judge.outputs import outputs_of

    summary = evaluate_generations(
        setup.model,
        records,
        cfg.judge,
        out,
        device=runtime.device,
        objective_needs_judge=objective.needs_judge,
        prompt_style=cfg.task.get("prompt_style", "alpaca"),
        split=split,
    )
    return outputs_of(split).metric_names(summary)
