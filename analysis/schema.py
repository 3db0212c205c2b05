"""The vocabulary the tables and plots share: which user attributes are knobs, and how to label them.

Names are the metrics.json names the sweeper stores as user attributes (see ARCHITECTURE.md), so a new knob is one
line here.
"""

from __future__ import annotations

from dataclasses import dataclass

# system attribute the sweeper sets on a trial it closed without running it (it lost the race for the last place
# of the n_trials budget); such a trial is bookkeeping, not a result, and the analysis leaves it out
NOT_RUN_ATTR = "lorasweep:not_run"


@dataclass(frozen=True)
class Knob:
    """A training setting whose effect on the objective the report shows."""

    attr: str  # user attribute (metrics.json `summary` name)
    params: tuple[str, ...]  # sweep params (Hydra overrides) that set it
    label: str  # axis label, with its unit
    log: bool = False  # spans decades: log axis, log-spaced bins
    categorical: bool = False  # names, not numbers


KNOBS: tuple[Knob, ...] = (
    Knob("lora_rank", ("lora.rank",), "LoRA rank r (adapter width)"),
    Knob("lora_alpha", ("lora.alpha",), "LoRA alpha (scale = alpha / r)"),
    Knob("freeze_blocks", ("freeze.blocks",), "frozen transformer blocks (count)"),
    Knob("model", ("model",), "GPT-2 size (preset)", categorical=True),
    Knob("lr", ("optim.lr",), "peak learning rate (log scale)", log=True),
    Knob("warmup_ratio", ("schedule.warmup_ratio",), "warmup (fraction of optimizer steps)"),
    Knob("batch_size", ("trainer.batch_size",), "batch size (sequences per step)"),
    Knob("grad_accum", ("trainer.grad_accum",), "gradient accumulation (micro-batches)"),
    Knob("epochs", ("trainer.epochs",), "epochs (passes over the training split)"),
    Knob("optimizer", ("optim",), "optimizer", categorical=True),
    Knob("schedule", ("schedule",), "learning-rate schedule", categorical=True),
)

# model presets from small to large, so categorical axes read left to right by size
MODEL_ORDER = ("tiny", "small", "medium", "large", "xl")

FINETUNE_MODES = ("full", "lora")

# objective name -> axis label with unit; unknown names fall back to the name itself
OBJECTIVE_LABELS = {
    "accuracy": "validation accuracy (fraction correct)",
    "val_accuracy": "validation accuracy (fraction correct)",
    "macro_f1": "validation macro-F1 (0-1)",
    "val_macro_f1": "validation macro-F1 (0-1)",
    "loss": "validation loss (nats per token)",
    "val_loss": "validation loss (nats per token)",
    "perplexity": "validation perplexity (lower is better)",
    "val_perplexity": "validation perplexity (lower is better)",
    "judge": "LLM judge score (0-100)",
    "judge_mean": "LLM judge score (0-100)",
    "rouge_l": "ROUGE-L F1 (0-1)",
    "trainable_params": "trainable parameters (count)",
    "peak_memory_mb": "peak memory (MB)",
}

# the trial's configuration as the tables show it, in reading order
CONFIG_COLUMNS = ("model", "finetune", "lora_rank", "freeze_blocks", "lr", "batch_size", "epochs")

# what a configuration costs, as the comparison shows it
COST_COLUMNS = ("trainable_params", "trainable_pct", "total_params", "peak_memory_mb", "wall_time_s", "tokens_per_s")


def objective_label(name: str) -> str:
    """Axis label for an objective, with its unit where known."""
    return OBJECTIVE_LABELS.get(name, name)
