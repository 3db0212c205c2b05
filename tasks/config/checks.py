"""What a schema cannot say about a trial config: value ranges, choices, and rules across keys. One module.

Types and the set of keys are the schemas' (`tasks.config.schema`); this module checks the rest and lists every
problem at once, one `ValueError` line in Optuna's form ("condition, but got name=value"), problems separated by
"; ". `check_config` is the one entry for a trial's whole config: a trial runs it first, and the sweeper runs it on
every swept value before the first trial (sweep.py registers it). The task node's own rules (its sizes, files and
columns) belong to its `Task` class, which knows its data; `check_config` runs them too, through `get_task`.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tasks.config import keys
from tasks.config.schema import JudgeConf
from tasks.train.optim import OPTIMIZERS, SCHEDULES
from tasks.train.runtime import DEVICES, PRECISIONS

FINETUNE_MODES = ("full", "lora")
PHASES = ("search", "confirm")  # a search trial never sees test generations; a confirmation run scores them
# trainer.reuse: which finished twin's result a trial may take instead of training (tasks.train.reuse)
REUSE_MODES = ("same_version", "any_version", "off")
J = TypeVar("J", bound=JudgeConf)
THINKING_LEVELS = ("minimal", "low", "medium", "high", "xhigh")
PROMPT_FIELDS = ("input", "output", "response")


class ConfigError(ValueError):
    """A trial config that cannot run; raised before data is tokenized or a model is built."""


class JudgeConfigError(ConfigError):
    """A `judge` config that cannot run; every problem in one message."""


def _positive(problems: list[str], name: str, value: Any, *, allow_none: bool = False) -> None:
    if (value is None and not allow_none) or (value is not None and not value > 0):
        problems.append(f"`{name} > 0` must hold, but got {name}={value!r}")


def _at_least(problems: list[str], name: str, value: Any, low: float) -> None:
    if value is None or value < low:
        problems.append(f"`{name} >= {low}` must hold, but got {name}={value!r}")


def _in(problems: list[str], name: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        problems.append(f"{name} must be one of {', '.join(allowed)}, but got {name}={value!r}")


# --------------------------------------------------------------------------------------------- a trial


def check_config(cfg: DictConfig) -> None:
    """Raise `ConfigError` listing every problem of a trial config: keys no schema has, then every value a trial
    would refuse (the model preset bounds `freeze.blocks` and `lora.rank`; the task and, for alpaca, the judge)."""
    from model import PRESETS

    problems: list[str] = []
    unknown = keys.unknown_keys(cfg)
    if unknown:
        problems.append(f"{keys.UNKNOWN}, but got {', '.join(unknown)}")
    _in(problems, "model.preset", cfg.model.preset, PRESETS)
    preset = PRESETS.get(cfg.model.preset)
    _in(problems, "finetune.mode", cfg.finetune.mode, FINETUNE_MODES)
    if cfg.finetune.mode == "lora":
        problems += lora_problems(cfg.lora, preset["n_embd"] if preset else None, cfg.model.name)
    n_layer = preset["n_layer"] if preset else None
    blocks = cfg.freeze.blocks
    if not 0 <= blocks <= (n_layer if n_layer is not None else blocks):
        bound = f"n_layer={n_layer} of model={cfg.model.name}" if n_layer is not None else "n_layer"
        problems.append(f"`0 <= freeze.blocks <= {bound}` must hold, but got freeze.blocks={blocks!r}")
    problems += trainer_problems(cfg.trainer) + optim_problems(cfg.optim, cfg.schedule)
    if not any(u.startswith(("task.", "judge.")) for u in unknown):  # else the task would name them again
        problems += task_and_judge_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def trainer_problems(tr: DictConfig) -> list[str]:
    problems: list[str] = []
    for key in ("batch_size", "grad_accum", "epochs"):
        _positive(problems, f"trainer.{key}", tr[key])
    for key in ("max_steps", "eval_every", "patience", "max_eval_batches", "grad_clip", "num_threads", "bucket"):
        _positive(problems, f"trainer.{key}", tr[key], allow_none=True)
    _positive(problems, "trainer.eval_batch_size", tr.eval_batch_size, allow_none=True)
    _in(problems, "trainer.phase", tr.phase, PHASES)
    if tr.confirms is not None and tr.confirms < 0:
        problems.append(f"trainer.confirms must be a trial number >= 0 or null, but got trainer.confirms={tr.confirms}")
    _in(problems, "trainer.device", tr.device, DEVICES)
    _in(problems, "trainer.precision", tr.precision, PRECISIONS)
    _in(problems, "trainer.reuse", tr.reuse, REUSE_MODES)
    return problems


def optim_problems(optim: DictConfig, sched: DictConfig) -> list[str]:
    problems: list[str] = []
    _in(problems, "optim.name", optim.name, OPTIMIZERS)
    _positive(problems, "optim.lr", optim.lr)
    _at_least(problems, "optim.weight_decay", optim.weight_decay, 0)
    _in(problems, "schedule.name", sched.name, SCHEDULES)
    warmup, floor = sched.warmup_ratio, sched.min_lr_ratio
    if not 0.0 <= warmup < 1.0:
        problems.append(f"`0 <= schedule.warmup_ratio < 1` must hold, but got schedule.warmup_ratio={warmup}")
    if not 0.0 <= floor <= 1.0:
        problems.append(f"`0 <= schedule.min_lr_ratio <= 1` must hold, but got schedule.min_lr_ratio={floor}")
    return problems


def lora_problems(lora: DictConfig, n_embd: int | None, model_name: str) -> list[str]:
    """The `lora` node against what the model accepts (`model.lora`): every problem, one line each."""
    from model.lora import ALL_TARGETS, INITS, VARIANTS, LoRASettings, target_shape

    problems: list[str] = []
    _positive(problems, "lora.rank", lora.rank)
    _positive(problems, "lora.alpha", lora.alpha)
    _positive(problems, "lora.lr_ratio", lora.lr_ratio)
    if not 0.0 <= lora.dropout < 1.0:
        problems.append(f"`0 <= lora.dropout < 1` must hold, but got lora.dropout={lora.dropout!r}")
    _in(problems, "lora.variant", lora.variant, VARIANTS)
    _in(problems, "lora.init", lora.init, INITS)
    targets = [str(t) for t in lora.targets]
    if not targets or any(t not in ALL_TARGETS for t in targets):
        problems.append(
            f"lora.targets must be a non-empty list of {', '.join(ALL_TARGETS)}, but got lora.targets={targets}"
        )
    elif "qkv" in targets and {"q", "k", "v"} & set(targets):
        problems.append(
            f"lora.targets must adapt each projection once (qkv covers q, k and v), but got lora.targets={targets}"
        )
    elif n_embd is not None and not problems:
        for target in targets:
            width = min(target_shape(target, n_embd))
            if lora.rank > width:
                problems.append(
                    f"`lora.rank <= {width}` must hold for target {target} of model={model_name} (its width), "
                    f"but got lora.rank={lora.rank}"
                )
        if not problems:  # whatever else the model would refuse, refused here first
            try:
                LoRASettings(lora.rank, lora.alpha, lora.dropout, tuple(targets), lora.rslora, lora.variant, lora.init)
            except ValueError as e:
                problems.append(str(e))
    return problems


def task_and_judge_problems(cfg: DictConfig) -> list[str]:
    """The task node's own rules (its class checks them: sizes, files, columns), and the judge's for a task that
    generates."""
    from tasks.registry import get_task

    try:
        task = get_task(cfg.task)
    except ValueError as e:
        return [str(e)]
    if task.kind != "lm":
        return []
    try:
        judge_settings(cfg.judge)
    except JudgeConfigError as e:
        return [str(e)]
    return []


# --------------------------------------------------------------------------------------------- the judge


def judge_settings(judge_cfg: DictConfig | Mapping[str, Any], kind: type[J] = JudgeConf) -> J:  # type: ignore[assignment]
    """A `judge` node typed by its schema (`kind`: `JudgeConf` or a subclass), its values checked: the judge's
    settings. `cache_dir` null becomes `$LORASWEEP_CACHE_DIR/judge`, else `.cache/judge` under the working directory.
    Raises `JudgeConfigError` naming every unknown key, wrong type or bad value."""
    given = OmegaConf.to_container(judge_cfg, resolve=True) if OmegaConf.is_config(judge_cfg) else dict(judge_cfg)
    assert isinstance(given, dict)
    problems = []
    if given.pop("api_key", None) is not None:
        problems.append("the judge key is read from GOOGLE_API_KEY or GEMINI_API_KEY only; remove judge.api_key")
    try:
        node = OmegaConf.merge(OmegaConf.structured(kind), given)
    except OmegaConfBaseException as e:
        raise JudgeConfigError("; ".join([*problems, keys.schema_problem(e, given, "judge.")])) from None
    problems += judge_problems(node)  # type: ignore[arg-type]
    if problems:
        raise JudgeConfigError("; ".join(problems))
    settings = OmegaConf.to_object(node)
    assert isinstance(settings, kind)
    if not settings.cache_dir:
        env = os.environ.get("LORASWEEP_CACHE_DIR")
        settings.cache_dir = str((Path(env).expanduser() if env else Path.cwd() / ".cache") / "judge")
    settings.cache_dir = str(Path(settings.cache_dir).expanduser())
    for name in ("base_url", "api_version", "thinking_level"):  # "" as null
        setattr(settings, name, getattr(settings, name) or None)
    return settings


def judge_problems(judge: DictConfig) -> list[str]:
    """Every problem of a typed `judge` node's values, one line each."""
    problems: list[str] = []
    if not judge.model.strip():
        problems.append(f"judge.model must be a Gemini model id, but got judge.model={judge.model!r}")
    problems += _template_problems(judge.prompt_template)
    _at_least(problems, "judge.repeats", judge.repeats, 1)
    _at_least(problems, "judge.concurrency", judge.concurrency, 1)
    _positive(problems, "judge.requests_per_minute", judge.requests_per_minute, allow_none=True)
    _positive(problems, "judge.timeout_s", judge.timeout_s)
    if judge.thinking_level is not None and judge.thinking_level.lower() not in THINKING_LEVELS:
        problems.append(
            f"judge.thinking_level must be null or one of {', '.join(THINKING_LEVELS)}, "
            f"but got judge.thinking_level={judge.thinking_level!r}"
        )
    retry, gen = judge.retry, judge.generation
    _at_least(problems, "judge.retry.max_attempts", retry.max_attempts, 1)
    for name in ("initial_delay_s", "max_delay_s", "jitter_s"):
        _at_least(problems, f"judge.retry.{name}", retry[name], 0)
    _at_least(problems, "judge.retry.exp_base", retry.exp_base, 1)
    _at_least(problems, "judge.generation.max_new_tokens", gen.max_new_tokens, 1)
    _at_least(problems, "judge.generation.batch_size", gen.batch_size, 1)
    _at_least(problems, "judge.generation.temperature", gen.temperature, 0)
    if gen.top_k is not None:
        _at_least(problems, "judge.generation.top_k", gen.top_k, 1)
    if gen.top_p is not None and not 0 < gen.top_p <= 1:
        problems.append(f"`0 < judge.generation.top_p <= 1` must hold, but got judge.generation.top_p={gen.top_p}")
    return problems


def _template_problems(template: str) -> list[str]:
    if not template.strip():
        return [f"judge.prompt_template must be a non-empty string, but got {template!r}"]
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        return [f"judge.prompt_template must be a valid format string ({exc}); write literal braces as {{{{ }}}}"]
    problems = []
    unknown = sorted(fields - set(PROMPT_FIELDS))
    if unknown:
        problems.append(
            f"judge.prompt_template fields must be among {{{'}, {'.join(PROMPT_FIELDS)}}}, but got {unknown}"
        )
    if "response" not in fields:
        problems.append("judge.prompt_template must contain {response}, but got a template without it")
    return problems
