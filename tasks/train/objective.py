"""What a trial returns to the study: metric names, their metrics.json keys and directions (ARCHITECTURE.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from tasks.metrics import GENERATION_METRICS, LOOP_METRICS, objective_direction, objective_key


@dataclass(frozen=True)
class Objective:
    """The `objective` config key resolved: one entry per objective (several for a multi-objective study)."""

    names: tuple[str, ...]
    keys: tuple[str, ...]
    directions: tuple[str, ...]

    @property
    def is_multi(self) -> bool:
        return len(self.names) > 1

    @property
    def on_validation(self) -> bool:
        """Whether the (first) objective is measured by the validation loop, so the loop can watch it (generation
        metrics such as `val_judge_mean` are validation metrics too, but measured once, after training)."""
        return self.keys[0].startswith("val_") and self.keys[0].removeprefix("val_") in LOOP_METRICS

    @property
    def needs_judge(self) -> bool:
        """Whether a value comes from the LLM judge: a judge that cannot run then fails the trial."""
        return any(k.endswith("judge_mean") for k in self.keys)

    @property
    def needs_generations(self) -> bool:
        """Whether a value comes from the validation prompts' generations (ROUGE-L, exact match, the judge)."""
        return any(k.removeprefix("val_") in GENERATION_METRICS for k in self.keys)

    @classmethod
    def from_config(cls, objective: Any) -> Objective:
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

    def block(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """metrics.json's `objective` block: name, key, direction and value (lists for multi-objective)."""
        value = self.value(metrics)
        values = value if isinstance(value, tuple) else (value,)
        one = not self.is_multi
        return {
            "name": self.names[0] if one else list(self.names),
            "key": self.keys[0] if one else list(self.keys),
            "direction": self.directions[0] if one else list(self.directions),
            "value": values[0] if one else list(values),
        }


def better(a: float, b: float | None, direction: str) -> bool:
    """Whether `a` beats the best so far `b` (None: nothing yet) in `direction`."""
    if b is None:
        return True
    return a < b if direction == "minimize" else a > b
