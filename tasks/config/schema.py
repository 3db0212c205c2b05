"""One schema per config group: the keys a trial reads and their types, as Hydra structured configs.

The YAML options in conf/ hold the values (and a comment per key); these dataclasses hold the keys and types only:
every field is MISSING here, so a default is written once, in YAML. Each option extends its schema through its
defaults list (`- /schema_trainer@_here_`), and the root schema (`schema_config`, first in conf/config.yaml's
defaults) types every node, so Hydra composes in struct mode against them:

- an override of a key no schema has fails at composition (`trainer.lr=1e-4`);
- a value of the wrong type fails at composition (`trainer.batch_size=abc`);
- a key added with `+` (which Hydra adds even in struct mode) or by a file stays visible to
  `tasks.config.keys.unknown_keys`, which `tasks.config.checks.check_config` runs on every trial config.

Value ranges, choices and rules across keys are not types: they live in `tasks.config.checks`. The schemas are
registered in Hydra's ConfigStore when this module is imported (`tasks.config` imports it) under root names, so they
are not config groups and `--help` lists only the options a user picks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# ------------------------------------------------------------------------------------------- the model and LoRA


@dataclass
class ModelConf:
    name: str = MISSING
    preset: str = MISSING
    hub_id: str | None = MISSING
    revision: str | None = MISSING
    pretrained: bool = MISSING
    dropout: float = MISSING


@dataclass
class FinetuneConf:
    mode: str = MISSING


@dataclass
class LoRAConf:
    rank: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING
    targets: list[str] = MISSING
    rslora: bool = MISSING
    variant: str = MISSING
    init: str = MISSING
    lr_ratio: float = MISSING


@dataclass
class FreezeConf:
    blocks: int = MISSING


# ------------------------------------------------------------------------------------------- tasks


@dataclass
class TaskConf:
    """What every task reads; an option extends one of the subclasses below."""

    name: str = MISSING
    objective: str = MISSING
    path: str | None = MISSING
    train_size: Any = MISSING  # rows (int), a fraction (float) or null
    val_size: Any = MISSING
    test_size: Any = MISSING
    max_length: int | None = MISSING
    seed: int = MISSING


@dataclass
class AlpacaTaskConf(TaskConf):
    hub_id: str | None = MISSING
    revision: str | None = MISSING
    val_generate_size: int = MISSING
    max_output_chars: int | None = MISSING
    mask_prompt: bool = MISSING
    prompt_style: str = MISSING


@dataclass
class ClassificationTaskConf(TaskConf):
    truncation_side: str = MISSING
    balance: bool = MISSING


@dataclass
class HubClassificationTaskConf(ClassificationTaskConf):
    """sst2, ag_news, sms_spam: a hub dataset or its original files."""

    hub_id: str | None = MISSING
    revision: str | None = MISSING


@dataclass
class TextClassificationTaskConf(ClassificationTaskConf):
    """Your own labelled files."""

    train_path: str | None = MISSING
    val_path: str | None = MISSING
    test_path: str | None = MISSING
    format: str | None = MISSING
    text_column: str = MISSING
    label_column: str = MISSING
    label_names: list[str] | None = MISSING


# ------------------------------------------------------------------------------------------- training


@dataclass
class OptimConf:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass
class AdamConf(OptimConf):
    """adamw and adam."""

    betas: list[float] = MISSING
    eps: float = MISSING


@dataclass
class SGDConf(OptimConf):
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class ScheduleConf:
    name: str = MISSING
    warmup_ratio: float = MISSING
    min_lr_ratio: float = MISSING


@dataclass
class TrainerConf:
    epochs: int = MISSING
    max_steps: int | None = MISSING
    batch_size: int = MISSING
    eval_batch_size: int | None = MISSING
    bucket: int | None = MISSING
    grad_accum: int = MISSING
    eval_every: int | None = MISSING
    max_eval_batches: int | None = MISSING
    patience: int | None = MISSING
    grad_clip: float | None = MISSING
    precision: str = MISSING
    device: str = MISSING
    seed: int = MISSING
    phase: str = MISSING
    confirms: int | None = MISSING
    grad_checkpointing: bool = MISSING
    compile: bool = MISSING
    num_threads: int | None = MISSING
    reuse: str = MISSING
    save_checkpoint: bool = MISSING


@dataclass
class PathsConf:
    root_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING


# ------------------------------------------------------------------------------------------- the judge


@dataclass
class RetrySettings:
    """Backoff for 429/5xx and transport errors; `max_attempts` includes the first request."""

    max_attempts: int = MISSING
    initial_delay_s: float = MISSING
    max_delay_s: float = MISSING
    exp_base: float = MISSING
    jitter_s: float = MISSING


@dataclass
class GenerationSettings:
    """How responses are generated for alpaca's prompts (greedy by default, as the report)."""

    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int | None = MISSING
    top_p: float | None = MISSING
    batch_size: int = MISSING


@dataclass
class JudgeConf:
    """The `judge` node; `tasks.judge.settings.JudgeSettings` is this, checked, with what the judge computes from it."""

    enabled: bool = MISSING
    model: str = MISSING
    base_url: str | None = MISSING
    api_version: str | None = MISSING
    prompt_template: str = MISSING
    repeats: int = MISSING
    concurrency: int = MISSING
    requests_per_minute: float | None = MISSING
    timeout_s: float = MISSING
    thinking_level: str | None = MISSING
    structured_output: bool = MISSING
    cache: bool = MISSING
    cache_dir: str | None = MISSING  # checked settings: $LORASWEEP_CACHE_DIR/judge or ./.cache/judge when null
    retry: RetrySettings = field(default_factory=RetrySettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)


# ------------------------------------------------------------------------------------------- the whole config


@dataclass
class LorasweepConfig:
    """conf/config.yaml composed: one node per group, plus the top-level keys (Hydra adds `hydra`)."""

    objective: Any = MISSING  # a name or a list of names
    direction: Any = MISSING
    model: ModelConf = field(default_factory=ModelConf)
    task: TaskConf = field(default_factory=TaskConf)
    finetune: FinetuneConf = field(default_factory=FinetuneConf)
    lora: LoRAConf = field(default_factory=LoRAConf)
    freeze: FreezeConf = field(default_factory=FreezeConf)
    optim: OptimConf = field(default_factory=OptimConf)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    judge: JudgeConf = field(default_factory=JudgeConf)
    paths: PathsConf = field(default_factory=PathsConf)


# ConfigStore name -> schema; conf/<group>/<option>.yaml names one in its defaults list: `- /<name>@_here_`
SCHEMAS: dict[str, type] = {
    "schema_config": LorasweepConfig,
    "schema_model": ModelConf,
    "schema_finetune": FinetuneConf,
    "schema_task_alpaca": AlpacaTaskConf,
    "schema_task_hub_classification": HubClassificationTaskConf,
    "schema_task_text_classification": TextClassificationTaskConf,
    "schema_optim_adam": AdamConf,
    "schema_optim_sgd": SGDConf,
    "schema_schedule": ScheduleConf,
    "schema_trainer": TrainerConf,
    "schema_judge": JudgeConf,
    "schema_paths": PathsConf,
}

# the schemas a node may take: a subclass of the root's field type, picked by the option (suggestions search them all)
VARIANTS: dict[str, tuple[type, ...]] = {
    "task": (AlpacaTaskConf, HubClassificationTaskConf, TextClassificationTaskConf),
    "optim": (AdamConf, SGDConf),
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent: a later store replaces the same node)."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)


def schema_keys(cls: type = LorasweepConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config of schema `cls` can hold, its variants' keys included (for suggestions)."""
    from typing import get_type_hints

    hints = get_type_hints(cls)
    out: list[str] = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        classes = VARIANTS.get(key, ()) or ((hints[f.name],) if is_dataclass(hints[f.name]) else ())
        for sub in classes:
            out += [k for k in schema_keys(sub, f"{key}.") if k not in out]
    return out


register()
