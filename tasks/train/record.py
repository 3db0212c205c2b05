"""What a trial leaves behind: metrics.json in its run folder, the same content as the sweep trial's attributes.

ARCHITECTURE.md lists metrics.json's fields. A pruned trial records what it measured before it stopped; a trial
whose config, data and code match a finished one (`tasks.train.reuse`) records that one's result.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.files import write_atomic
from tasks.train.costs import machine, machine_load, steady_state
from tasks.train.loop import FitState, steps_per_epoch
from tasks.train.objective import Objective
from tasks.train.reuse import fingerprints, lora_targets_label
from tasks.train.runtime import PeakMemory, Runtime, code_version

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # an interpolation that only resolves inside a Hydra run (e.g. ${hydra:...})
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def write_metrics(out: Path, result: Mapping[str, Any], trial: Any) -> None:
    """metrics.json into the run folder (atomically, synced to disk), then onto the sweep trial when there is one."""
    write_atomic(out / METRICS_FILE, json.dumps(result, indent=2, default=str) + "\n", durable=True)
    if trial is not None:
        trial.set_metrics(result)


def lora_method(lora: DictConfig) -> str:
    """The LoRA method a `lora` node amounts to, by the keys that tell them apart: "lora" (none of them), "rslora",
    "dora", "pissa", "lora+ x16" (lr_ratio), or their combination ("dora + rslora")."""
    parts = [
        "dora" if lora.variant == "dora" else "",
        "pissa" if lora.init == "pissa" else "",
        "rslora" if lora.rslora else "",
        f"lora+ x{lora.lr_ratio:g}" if lora.lr_ratio != 1 else "",
    ]
    return " + ".join(p for p in parts if p) or "lora"


def summary(cfg: DictConfig) -> dict[str, Any]:
    """The knobs the analysis groups trials by."""
    lora = cfg.finetune.mode == "lora"
    tr = cfg.trainer
    return {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "finetune": cfg.finetune.mode,
        "lora_rank": cfg.lora.rank if lora else None,
        "lora_alpha": cfg.lora.alpha if lora else None,
        # the adapter's kind: the report groups LoRA trials by method and targets (None under full fine-tuning)
        "lora_method": lora_method(cfg.lora) if lora else None,
        "lora_targets": lora_targets_label(cfg.lora.targets) if lora else None,
        "lora_variant": cfg.lora.variant if lora else None,
        "lora_init": cfg.lora.init if lora else None,
        "lora_rslora": cfg.lora.rslora if lora else None,
        "lora_lr_ratio": cfg.lora.lr_ratio if lora else None,
        "freeze_blocks": cfg.freeze.blocks,
        "optimizer": cfg.optim.name,
        "lr": cfg.optim.lr,
        "schedule": cfg.schedule.name,
        "warmup_ratio": cfg.schedule.warmup_ratio,
        "batch_size": tr.batch_size,
        "grad_accum": tr.grad_accum,
        "epochs": tr.epochs,
        "max_steps": tr.max_steps,
        "seed": tr.seed,  # a confirmation run differs from the trial it confirms in seed and phase only
        "phase": tr.get("phase", "search"),
        "confirms": tr.get("confirms"),
    }


@dataclass(frozen=True)
class Recorder:
    """Writes one trial's metrics.json and hands it to the sweep trial; knows what the trial set up."""

    cfg: DictConfig
    runtime: Runtime
    out: Path
    started: float
    memory: PeakMemory
    params: tuple[int, int]  # trainable, total
    data_info: Mapping[str, Any]
    trial: Any  # the sweep trial, or None
    load_start: Mapping[str, Any] = field(default_factory=dict)  # `costs.machine_load("start")` when the trial began

    def pruned(self, state: FitState, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Keep what a pruned trial measured (curves, memory, throughput, `extra` metrics); no objective block."""
        result = self.payload(state, {**state.best_metrics, **(extra or {})}, status="pruned")
        write_metrics(self.out, result, self.trial)
        return result

    def complete(self, state: FitState, metrics: dict[str, Any], objective: Objective) -> dict[str, Any]:
        """The finished trial's record, with its objective value(s)."""
        result = self.payload(state, metrics, status="complete")
        flat = {**metrics, **{k: v for k, v in result.items() if not isinstance(v, (dict, list))}}
        result["objective"] = objective.block(flat)
        write_metrics(self.out, result, self.trial)
        return result

    def steps_per_epoch(self) -> int | None:
        """Optimizer steps in one pass over the training split (None when the load report lacks its size)."""
        rows = _train_rows(self.data_info)
        return steps_per_epoch(rows, self.cfg.trainer) if rows is not None else None

    def payload(self, state: FitState, metrics: dict[str, Any], *, status: str) -> dict[str, Any]:
        """The metrics.json content (ARCHITECTURE.md); the objective block is empty here."""
        trainable, total = self.params
        return {
            "status": status,
            "objective": {},
            "metrics": metrics,
            "summary": summary(self.cfg),
            "trainable_params": trainable,
            "total_params": total,
            "trainable_pct": 100.0 * trainable / total,
            "peak_memory_mb": self.memory.megabytes(),
            "peak_memory_source": self.memory.source,
            "peak_memory_own": self.memory.own,
            "memory_at_start_mb": self.memory.start_mb,
            "wall_time_s": time.perf_counter() - self.started,
            "train_time_s": state.train_time_s,
            "train_tokens": state.train_tokens,
            **steady_state(state.step_times, state.step_tokens),  # tokens_per_s: the steady-state median
            "steps": state.step,
            "steps_per_epoch": self.steps_per_epoch(),  # epochs trained = steps / steps_per_epoch
            "stopped_early": state.stopped_early,
            "device": str(self.runtime.device),
            **machine(self.runtime.device),
            **self.load_start,
            **machine_load("end"),
            "precision": self.runtime.precision,
            "seed": self.cfg.trainer.seed,
            "run_dir": str(self.out),
            "code_version": code_version(),
            **fingerprints(self.cfg, self.data_info),
            "data": dict(self.data_info),
            "train_curve": state.train_curve,
            "val_curve": state.val_curve,
            "config": resolved_config(self.cfg),
        }


def _train_rows(data_info: Mapping[str, Any]) -> int | None:
    splits = data_info.get("splits") if isinstance(data_info, Mapping) else None
    train = splits.get("train") if isinstance(splits, Mapping) else None
    rows = train.get("rows") if isinstance(train, Mapping) else None
    return rows if isinstance(rows, int) and rows > 0 else None


def reuse(twin: Any, trial: Any, out: Path, started: float) -> dict[str, Any]:
    """Record an equivalent finished trial's result as this trial's, without training (see `tasks.train.reuse`)."""
    source = Path(str(twin.user_attrs.get("run_dir", ""))) / METRICS_FILE
    if source.is_file():
        result = json.loads(source.read_text())
    else:  # the twin ran on another machine: what the study holds is what is known
        values = twin.values if len(twin.values) > 1 else twin.values[0]
        result = {**twin.user_attrs, "objective": {"name": twin.user_attrs.get("objective_name"), "value": values}}
    result.update(status="duplicate", duplicate_of=twin.number, run_dir=str(out))
    result["reuse_time_s"] = time.perf_counter() - started
    write_metrics(out, result, trial)
    log.info(
        "trial %d has the same effective config as finished trial %d: its result is reused, nothing trained → %s",
        trial.number, twin.number, out / METRICS_FILE,
    )  # fmt: skip
    return result


def log_done(result: Mapping[str, Any], objective: Objective, out: Path) -> None:
    """The trial's one-line summary."""
    value = result["objective"]["value"]
    values = value if isinstance(value, list) else [value]
    # a run too short for a step after warm-up has no steady-state figure: say so rather than print 0
    speed = result["tokens_per_s"]
    speed_text = f"{speed:.0f} tokens/s" if speed is not None else "tokens/s unmeasured (no step after warm-up)"
    learned = result["metrics"].get("learned", True)
    flags = f" · LEARNED NOTHING: {result['metrics'].get('flags')}" if learned is False else ""
    log.info(
        "trial done: %s (best step %s of %d)%s · %.2f%% trainable · peak %.0f MB · %s · %.1fs → %s",
        ", ".join(f"{n}={v:.4g}" for n, v in zip(objective.names, values, strict=True)),
        result["metrics"]["best_step"],
        result["steps"],
        flags,
        result["trainable_pct"],
        result["peak_memory_mb"],
        speed_text,
        result["wall_time_s"],
        out / METRICS_FILE,
    )
