"""The confirmation phase's plan: which search trials to train again, with which seeds.

One search trial is one seed: a LoRA configuration that beat full fine-tuning by a point may have drawn a lucky
initialisation. After the search budget is spent, the best `top_k` configurations of each group (by default task,
model size, fine-tuning mode and LoRA rank) are trained again with `seeds` fresh seeds each
(`hydra.sweeper.confirm.seeds=3`); the report then gives each configuration a mean with its interval.

The plan is a pure function of the study's finished search trials and the settings, so every worker of a study
computes the same one, and a second run of the command finds the runs already done (`sweeper._confirm_runs` creates
and claims them). Choosing:

- candidates: COMPLETE search trials run with this command's fixed settings and search space (a trial of an extended
  study with other fixed values is not this command's), that trained (a trial that reused a twin's result,
  user attribute `duplicate_of`, stands for that twin), one per configuration (`config_fingerprint`);
- groups: each candidate's values of `group_by`, read from its composed config as the job sees it (a config group's
  option, else the key's value); a key that does not apply to the trial has no value there: the app says which
  nodes a config ignores (`set_inactive_keys`; lorasweep: `lora` under full fine-tuning), so full fine-tuning
  trials of any `lora.rank` form one group;
- the best `top_k` of each group by the study's objective (ties: the earlier trial);
- seeds: `seed_base`, `seed_base + 1`, ..., skipping the confirmed trial's own search seed (`trainer.seed`), so a
  confirmation never repeats the search run; every configuration gets the same seeds unless one was searched with
  one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from sweeper._budget import is_not_run
from sweeper._confirm_settings import ConfirmSettings
from sweeper._phase import search_trials
from sweeper._recorded import same_settings

log = logging.getLogger(__name__)

# the app's keys a confirmation run sets (lorasweep's trainer; tests/apps/quadratic.py has them too)
SEED_KEY = "trainer.seed"
PHASE_KEY = "trainer.phase"
CONFIRMS_KEY = "trainer.confirms"

InactiveKeys = Callable[[Any], Iterable[str]]
_inactive: InactiveKeys | None = None


def set_inactive_keys(inactive: InactiveKeys | None) -> None:
    """Register the app's rule for config nodes a trial ignores (`(cfg) -> ["lora"]` under full fine-tuning): a
    confirmation group key under one of them has no value for that trial."""
    global _inactive
    _inactive = inactive


@dataclass(frozen=True)
class Chosen:
    """A search trial chosen for confirmation: its group, its place in it, and the seeds it gets."""

    trial: FrozenTrial
    group: dict[str, Any]
    rank: int  # 1: the best of its group
    seeds: tuple[int, ...]

    def describe(self) -> str:
        group = ", ".join(f"{k}={v}" for k, v in self.group.items() if v is not None) or "the whole study"
        place = "best" if self.rank == 1 else f"#{self.rank}"
        return f"trial {self.trial.number} ({place} of {group}: {self.trial.value:.6g})"


@dataclass(frozen=True)
class Run:
    """One confirmation run: the configuration of search trial `trial`, trained with `seed`."""

    trial: FrozenTrial
    seed: int

    @property
    def key(self) -> tuple[int, int]:
        return self.trial.number, self.seed


def group_of(config: Any, keys: Iterable[str]) -> dict[str, Any]:
    """A trial's values of the group keys in its composed config; None for a key under a node it ignores."""
    from sweeper._pruners import group_values

    keys = list(keys)
    values = group_values(config, keys)
    for key in unused_keys(config, keys):
        values[key] = None
    return values


def unused_keys(config: Any, keys: Iterable[str]) -> list[str]:
    """The keys under a node the trial with this composed config ignores, by the app's rule (`set_inactive_keys`):
    `lora.rank` under full fine-tuning."""
    inactive = list(_inactive(config)) if _inactive is not None else []
    return [key for key in keys if any(key == node or key.startswith(node + ".") for node in inactive)]


def candidates(
    trials: Iterable[FrozenTrial], params: Iterable[str], fixed: Mapping[str, Any]
) -> tuple[list[FrozenTrial], list[int]]:
    """COMPLETE search trials of this command's settings, one per configuration; and the numbers of those
    left out for running with other fixed settings or another search space."""
    params = set(params)
    chosen, other, seen = [], [], set()
    for t in search_trials(trials):
        if t.state != TrialState.COMPLETE or is_not_run(t) or t.user_attrs.get("duplicate_of") is not None:
            continue
        if not same_settings(t, fixed) or not params <= set(t.params):
            other.append(t.number)
            continue
        config = t.user_attrs.get("config_fingerprint") or repr(sorted(t.params.items()))
        if config not in seen:
            seen.add(config)
            chosen.append(t)
    return chosen, other


def confirmation_seeds(settings: ConfirmSettings, search_seed: Any) -> tuple[int, ...]:
    """`settings.seeds` seeds from `seed_base` up, without the trial's own search seed."""
    seeds, seed = [], settings.seed_base
    while len(seeds) < settings.seeds:
        if seed != search_seed:
            seeds.append(seed)
        seed += 1
    return tuple(seeds)


def choose(
    trials: list[FrozenTrial],
    settings: ConfirmSettings,
    maximize: bool,
    describe: Callable[[FrozenTrial], tuple[dict[str, Any], Any]],
) -> list[Chosen]:
    """The best `top_k` candidates of each group. `describe(trial)` gives its group values and search seed."""
    groups: dict[tuple[Any, ...], list[tuple[FrozenTrial, dict[str, Any], Any]]] = {}
    for trial in trials:
        group, seed = describe(trial)
        groups.setdefault(tuple(repr(group.get(k)) for k in settings.group_by), []).append((trial, group, seed))
    chosen = []
    for members in groups.values():
        members.sort(key=lambda m: (-m[0].value if maximize else m[0].value, m[0].number))
        for rank, (trial, group, seed) in enumerate(members[: settings.top_k], 1):
            chosen.append(Chosen(trial, group, rank, confirmation_seeds(settings, seed)))
    return sorted(chosen, key=lambda c: c.trial.number)


def runs_of(chosen: list[Chosen]) -> list[Run]:
    """Every confirmation run, first seeds first: a sweep stopped midway has confirmed each configuration alike."""
    depth = max((len(c.seeds) for c in chosen), default=0)
    return [Run(c.trial, c.seeds[i]) for i in range(depth) for c in chosen if i < len(c.seeds)]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def confirm_overrides(overrides: list[str], number: int, seed: int) -> list[str]:
    """A search trial's job overrides made into those of its confirmation run with `seed`."""
    own = (SEED_KEY, PHASE_KEY, CONFIRMS_KEY)
    kept = [o for o in overrides if _override_key(o) not in own]
    return [*kept, f"{SEED_KEY}={seed}", f"{PHASE_KEY}=confirm", f"{CONFIRMS_KEY}={number}"]
