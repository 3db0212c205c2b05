"""The `judge` config node as typed settings, checked in one pass before any generation or request.

A trial calls `judge_config_problems` (or `JudgeSettings.from_config`) when it starts, so a typo in the judge
settings fails in seconds rather than after an hour of training. The API key is never part of these settings: it
is read from the environment at the moment the client is built (`api_key_from_env`).
"""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# the SDK's own precedence: GOOGLE_API_KEY wins when both are set
API_KEY_ENV_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
PROMPT_FIELDS = ("input", "output", "response")
THINKING_LEVELS = ("minimal", "low", "medium", "high", "xhigh")


class JudgeUnavailableError(RuntimeError):
    """The objective needs the judge, but it cannot run (disabled, no key, unreachable, nothing scored)."""


class JudgeConfigError(ValueError):
    """A `judge` config that cannot run; every problem in one message."""


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are generated for the alpaca test prompts (greedy by default, as the report)."""

    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    batch_size: int


@dataclass(frozen=True)
class RetrySettings:
    """Backoff for 429/5xx and transport errors; `max_attempts` includes the first request."""

    max_attempts: int
    initial_delay_s: float
    max_delay_s: float
    exp_base: float
    jitter_s: float


@dataclass(frozen=True)
class JudgeSettings:
    """The resolved `judge` node."""

    enabled: bool
    model: str
    base_url: str | None
    api_version: str | None
    prompt_template: str
    repeats: int
    concurrency: int
    requests_per_minute: float | None
    timeout_s: float
    thinking_level: str | None
    structured_output: bool
    cache: bool
    cache_dir: Path
    retry: RetrySettings
    generation: GenerationSettings

    @property
    def prompt_sha256(self) -> str:
        """Identifies the template in results, so scores from different prompts are never compared blindly."""
        return hashlib.sha256(self.prompt_template.encode("utf-8")).hexdigest()

    @classmethod
    def from_config(cls, judge_cfg: DictConfig | Mapping[str, Any]) -> JudgeSettings:
        """Validate and convert; raises `JudgeConfigError` naming every bad field."""
        raw = _to_dict(judge_cfg)
        problems = judge_config_problems(raw)
        if problems:
            raise JudgeConfigError("; ".join(problems))
        retry, gen = raw["retry"], raw["generation"]
        return cls(
            enabled=bool(raw["enabled"]),
            model=raw["model"],
            base_url=raw.get("base_url") or None,
            api_version=raw.get("api_version") or None,
            prompt_template=raw["prompt_template"],
            repeats=int(raw["repeats"]),
            concurrency=int(raw["concurrency"]),
            requests_per_minute=_opt_float(raw.get("requests_per_minute")),
            timeout_s=float(raw["timeout_s"]),
            thinking_level=raw.get("thinking_level") or None,
            structured_output=bool(raw.get("structured_output", True)),
            cache=bool(raw["cache"]),
            cache_dir=_cache_dir(raw.get("cache_dir")),
            retry=RetrySettings(
                max_attempts=int(retry["max_attempts"]),
                initial_delay_s=float(retry["initial_delay_s"]),
                max_delay_s=float(retry["max_delay_s"]),
                exp_base=float(retry["exp_base"]),
                jitter_s=float(retry["jitter_s"]),
            ),
            generation=GenerationSettings(
                max_new_tokens=int(gen["max_new_tokens"]),
                temperature=float(gen["temperature"]),
                top_k=None if gen.get("top_k") is None else int(gen["top_k"]),
                top_p=_opt_float(gen.get("top_p")),
                batch_size=int(gen["batch_size"]),
            ),
        )


def api_key_from_env() -> str | None:
    """The Gemini key from `GOOGLE_API_KEY` or `GEMINI_API_KEY`; never from a config file."""
    for name in API_KEY_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def judge_config_problems(judge_cfg: DictConfig | Mapping[str, Any]) -> list[str]:
    """Every problem of a `judge` node, one line each, in the form "condition, but got name=value"."""
    raw = _to_dict(judge_cfg)
    problems: list[str] = []
    allowed = {
        "enabled", "model", "base_url", "api_version", "prompt_template", "repeats", "concurrency",
        "requests_per_minute", "timeout_s", "thinking_level", "structured_output", "cache", "cache_dir", "retry",
        "generation",
    }  # fmt: skip
    unknown = sorted(set(raw) - allowed)
    if unknown:
        problems.append(f"judge keys must be among {sorted(allowed)}, but got unknown {unknown}")
    if "api_key" in raw:
        problems.append("the judge key is read from GOOGLE_API_KEY or GEMINI_API_KEY only; remove judge.api_key")
    _check_bool(problems, "judge.enabled", raw.get("enabled"))
    _check_bool(problems, "judge.cache", raw.get("cache"))
    _check_bool(problems, "judge.structured_output", raw.get("structured_output", True))
    if not isinstance(raw.get("model"), str) or not raw["model"].strip():
        problems.append(f"judge.model must be a Gemini model id, but got judge.model={raw.get('model')!r}")
    for name in ("base_url", "api_version"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            problems.append(f"judge.{name} must be a string or null, but got judge.{name}={raw[name]!r}")
    _check_template(problems, raw.get("prompt_template"))
    _check_int(problems, "judge.repeats", raw.get("repeats"), low=1)
    _check_int(problems, "judge.concurrency", raw.get("concurrency"), low=1)
    _check_number(problems, "judge.requests_per_minute", raw.get("requests_per_minute"), positive=True, opt=True)
    _check_number(problems, "judge.timeout_s", raw.get("timeout_s"), positive=True)
    level = raw.get("thinking_level")
    if level is not None and str(level).lower() not in THINKING_LEVELS:
        problems.append(
            f"judge.thinking_level must be null or one of {', '.join(THINKING_LEVELS)}, "
            f"but got judge.thinking_level={level!r}"
        )

    retry = raw.get("retry")
    if not isinstance(retry, dict):
        problems.append(f"judge.retry must be a mapping, but got judge.retry={retry!r}")
    else:
        _check_int(problems, "judge.retry.max_attempts", retry.get("max_attempts"), low=1)
        for name in ("initial_delay_s", "max_delay_s", "jitter_s"):
            _check_number(problems, f"judge.retry.{name}", retry.get(name), positive=False)
        exp_base = retry.get("exp_base")
        if not _is_number(exp_base) or exp_base < 1:
            problems.append(f"`judge.retry.exp_base >= 1` must hold, but got judge.retry.exp_base={exp_base!r}")

    gen = raw.get("generation")
    if not isinstance(gen, dict):
        problems.append(f"judge.generation must be a mapping, but got judge.generation={gen!r}")
    else:
        _check_int(problems, "judge.generation.max_new_tokens", gen.get("max_new_tokens"), low=1)
        _check_int(problems, "judge.generation.batch_size", gen.get("batch_size"), low=1)
        _check_number(problems, "judge.generation.temperature", gen.get("temperature"), positive=False)
        if gen.get("top_k") is not None:
            _check_int(problems, "judge.generation.top_k", gen.get("top_k"), low=1)
        top_p = gen.get("top_p")
        if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
            problems.append(f"`0 < judge.generation.top_p <= 1` must hold, but got judge.generation.top_p={top_p!r}")
    return problems


def _to_dict(judge_cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(judge_cfg, DictConfig):
        return OmegaConf.to_container(judge_cfg, resolve=True)  # type: ignore[return-value]
    return dict(judge_cfg)


def _cache_dir(value: Any) -> Path:
    """`judge.cache_dir`, else `$LORASWEEP_CACHE_DIR/judge`, else `.cache/judge` under the working directory."""
    if value:
        return Path(str(value)).expanduser()
    env = os.environ.get("LORASWEEP_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.cwd() / ".cache") / "judge"


def _check_template(problems: list[str], template: Any) -> None:
    if not isinstance(template, str) or not template.strip():
        problems.append(f"judge.prompt_template must be a non-empty string, but got {template!r}")
        return
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        problems.append(
            f"judge.prompt_template must be a valid format string ({exc}); write literal braces as {{{{ }}}}"
        )
        return
    unknown = sorted(fields - set(PROMPT_FIELDS))
    if unknown:
        problems.append(
            f"judge.prompt_template fields must be among {{{'}, {'.join(PROMPT_FIELDS)}}}, but got {unknown}"
        )
    if "response" not in fields:
        problems.append("judge.prompt_template must contain {response}, but got a template without it")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _check_bool(problems: list[str], name: str, value: Any) -> None:
    if not isinstance(value, bool):
        problems.append(f"{name} must be true or false, but got {name}={value!r}")


def _check_int(problems: list[str], name: str, value: Any, *, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        problems.append(f"`{name} >= {low}` must hold for an integer, but got {name}={value!r}")


def _check_number(problems: list[str], name: str, value: Any, *, positive: bool, opt: bool = False) -> None:
    if opt and value is None:
        return
    if not _is_number(value) or (value <= 0 if positive else value < 0):
        problems.append(f"`{name} {'>' if positive else '>='} 0` must hold, but got {name}={value!r}")
