"""The judge's settings and errors: `JudgeSettings` is the `judge` node's schema (`tasks.config.schema.JudgeConf`,
its keys and types) with its values checked (`tasks.config.checks.judge_problems`) and what the judge computes from
it. `JudgeSettings.from_config` runs before any generation or request, so a typo fails in seconds rather than after
an hour of training. The API key is never part of these settings: it is read from the environment when the client is
built (`api_key_from_env`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from tasks.config.checks import JudgeConfigError, judge_settings
from tasks.config.schema import GenerationSettings, JudgeConf, RetrySettings

# the SDK's own precedence: GOOGLE_API_KEY wins when both are set
API_KEY_ENV_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")

__all__ = [
    "API_KEY_ENV_VARS",
    "GenerationSettings",
    "JudgeConfigError",
    "JudgeSettings",
    "JudgeUnavailableError",
    "RetrySettings",
    "api_key_from_env",
]


class JudgeUnavailableError(RuntimeError):
    """The objective needs the judge, but it cannot run (disabled, no key, unreachable, nothing scored)."""


class JudgeSettings(JudgeConf):
    """The checked `judge` node (its fields are `JudgeConf`'s; `cache_dir` is always set)."""

    @property
    def prompt_sha256(self) -> str:
        """Identifies the template in results, so scores from different prompts are never compared blindly."""
        return hashlib.sha256(self.prompt_template.encode("utf-8")).hexdigest()

    @classmethod
    def from_config(cls, judge_cfg: DictConfig | Mapping[str, Any]) -> JudgeSettings:
        """Raises `JudgeConfigError` naming every unknown key, wrong type or bad value of `judge_cfg`."""
        return judge_settings(judge_cfg, cls)


def api_key_from_env() -> str | None:
    """The Gemini key from `GOOGLE_API_KEY` or `GEMINI_API_KEY`; never from a config file."""
    for name in API_KEY_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None
