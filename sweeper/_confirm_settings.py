"""`hydra.sweeper.confirm`: the confirmation phase's settings, checked when the sweeper is built (`sweeper._confirm`
says what they do)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_GROUP_BY = ("task", "model", "finetune", "lora.rank")
CONFIRM_KEYS = ("seeds", "top_k", "group_by", "seed_base")


@dataclass(frozen=True)
class ConfirmSettings:
    seeds: int = 0
    top_k: int = 1
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    seed_base: int = 1000

    @property
    def enabled(self) -> bool:
        return self.seeds > 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def confirm_settings(raw: Any) -> ConfirmSettings:
    """`hydra.sweeper.confirm` checked; raise ValueError (one line) on the first bad key."""
    if raw is None:
        return ConfirmSettings()
    if not isinstance(raw, Mapping):
        raise ValueError(f"`confirm` must be a mapping of {list(CONFIRM_KEYS)}, but got confirm={raw!r}.")
    unknown = sorted(set(raw) - set(CONFIRM_KEYS))
    if unknown:
        raise ValueError(f"`confirm` keys must be in {list(CONFIRM_KEYS)}, but got unknown keys {unknown}.")
    values = {**ConfirmSettings().__dict__, **raw}
    for key, low in (("seeds", 0), ("top_k", 1), ("seed_base", 0)):
        if not _is_int(values[key]) or values[key] < low:
            raise ValueError(f"`confirm.{key}` must be an integer >= {low}, but got confirm.{key}={values[key]!r}.")
    group_by = values["group_by"]
    if group_by is None:
        group_by = []
    if isinstance(group_by, str) or not all(isinstance(k, str) and k for k in group_by):
        raise ValueError(
            "`confirm.group_by` must be a list of config keys (task, model, finetune, lora.rank), "
            f"but got confirm.group_by={group_by!r}."
        )
    return ConfirmSettings(values["seeds"], values["top_k"], tuple(group_by), values["seed_base"])
