"""The vocabulary the tables and plots share: which user attributes are knobs, and how to label them.

Names are the metrics.json names the sweeper stores as user attributes (see ARCHITECTURE.md), so a new knob is one
line here.
"""

from __future__ import annotations

from dataclasses import dataclass

# system attribute the sweeper sets on a trial it closed without running it (it lost the race for the last place
# of the n_trials budget); such a trial is bookkeeping, not a result, and the analysis leaves it out
NOT_RUN_ATTR = "lorasweep:not_run"

# confirmation runs (issue [12]): a trial that re-trains a search trial's configuration with a fresh seed carries
# user attributes phase="confirm" and confirms=<the search trial's number>; search tables leave it out, verdicts
# use its value as one more seed of that configuration
PHASE_ATTR = "phase"
CONFIRM_PHASE = "confirm"
CONFIRMS_ATTR = "confirms"


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
    Knob(
        "lora_method",
        ("lora_method", "lora.variant", "lora.init", "lora.rslora", "lora.lr_ratio"),
        "LoRA method (lora, rslora, dora, pissa, lora+)",
        categorical=True,
    ),
    Knob("lora_targets", ("lora.targets",), "LoRA targets (adapted projections)", categorical=True),
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
    "judge": "LLM judge score on validation prompts (0-100)",
    "judge_mean": "LLM judge score (0-100)",
    "val_judge_mean": "LLM judge score on validation prompts (0-100)",
    "test_judge_mean": "LLM judge score on test prompts (0-100)",
    "rouge_l": "ROUGE-L F1 on validation prompts (0-1)",
    "val_rouge_l": "ROUGE-L F1 on validation prompts (0-1)",
    "trainable_params": "trainable parameters (count)",
    "peak_memory_mb": "peak memory (MB)",
}

# objectives on a 0-1 scale: a difference reads in points (0.01 = 1 point), the "matches" margin is absolute
FRACTION_OBJECTIVES = frozenset(
    {
        *("accuracy", "val_accuracy", "test_accuracy", "macro_f1", "val_macro_f1", "test_macro_f1"),
        *("rouge_l", "val_rouge_l", "test_rouge_l", "exact_match", "val_exact_match", "test_exact_match"),
    }
)

# objective name (the study's metric name) -> the metrics.json key it is measured as (tasks.metrics.OBJECTIVES);
# any other name is a metrics key itself. Every objective is a validation figure: test data never steers a search.
OBJECTIVE_KEYS = {
    "accuracy": "val_accuracy",
    "macro_f1": "val_macro_f1",
    "loss": "val_loss",
    "perplexity": "val_perplexity",
    "judge": "val_judge_mean",
    "rouge_l": "val_rouge_l",
}


def objective_key(name: str) -> str:
    """The metrics key of an objective: `accuracy` -> `val_accuracy`; a key stays itself."""
    return OBJECTIVE_KEYS.get(name, name)


# LoRA settings that make a different adapter (not a tuning knob): the report tells LoRA configurations apart by
# whichever of them a study records; sweep params `lora.<name>` count when no user attribute `lora_<name>` exists.
# `lora_method` (metrics.json: "lora", "rslora", "dora", "pissa", "lora+ x16", ...) sums up variant, init, rslora
# and lr_ratio, so those are not keys of their own
LORA_VARIANT_ATTRS = ("lora_rank", "lora_method", "lora_targets")
LORA_METHOD_PARTS = ("lora.variant", "lora.init", "lora.rslora", "lora.lr_ratio")
LORA_TUNING_PARAMS = ("lora.rank", "lora.alpha", "lora.dropout")

# the trial's configuration as the tables show it, in reading order; `epochs_trained` is the fraction of the
# training split actually seen (steps / steps per epoch), not the configured `trainer.epochs`
CONFIG_COLUMNS = (
    "model", "finetune", "lora_rank", "lora_method", "lora_targets", "freeze_blocks", "lr", "batch_size",
    "epochs_trained",
)  # fmt: skip

# what a configuration costs, as the comparison shows it
COST_COLUMNS = ("trainable_params", "trainable_pct", "total_params", "peak_memory_mb", "wall_time_s", "tokens_per_s")


def is_fraction_objective(name: str) -> bool:
    return name in FRACTION_OBJECTIVES


def is_lora_only(column: str) -> bool:
    """A knob that exists only with LoRA adapters: blank for full fine-tuning, importance over LoRA trials only."""
    name = column.removeprefix("params_")
    return name.startswith(("lora.", "lora_"))


def lora_variant_keys(columns: object) -> list[str]:
    """The columns (of a trials frame) that tell LoRA configurations apart, present in `columns`."""
    names = list(columns)  # type: ignore[call-overload]
    keys = [a for a in LORA_VARIANT_ATTRS if a in names]
    for column in names:
        param = str(column).removeprefix("params_")
        own_attr = f"lora_{param.removeprefix('lora.')}" in names
        summed_up = param in LORA_METHOD_PARTS and "lora_method" in names
        if str(column).startswith("params_lora.") and param not in LORA_TUNING_PARAMS and not (own_attr or summed_up):
            keys.append(str(column))
    return keys


def objective_label(name: str) -> str:
    """Axis label for an objective, with its unit where known."""
    return OBJECTIVE_LABELS.get(name, name)


def split_key(name: str, split: str) -> str | None:
    """The same metric on another split (`accuracy`, "test" -> `test_accuracy`); None when the objective is no
    split's metric. The test figure is shown only for a trial chosen on validation (and its confirmation runs),
    never used to choose."""
    key = objective_key(name)
    return f"{split}_" + key.removeprefix("val_") if key.startswith("val_") else None
