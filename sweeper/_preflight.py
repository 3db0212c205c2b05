"""Before the first trial: every swept value composes with the app's config and passes the app's own check.

A misspelt key (`lora.rnak=4,8`), a missing group option (`model=small,large`) or a value the app refuses
(`lora.rank=4,0`) must stop the sweep before anything trains, not after the good points ran. So the job config is
composed (Hydra's `load_sweep_config`, as the launcher will) for the first value of every parameter, then once for
each other categorical choice and each end of a range or interval, one parameter at a time; each composed config is
handed to the app's check (`(cfg) -> None`, raising ValueError with one line): the function an app registers with
`sweeper.set_config_check` (sweep.py does), or the dotted path in `hydra.sweeper.check`, which wins.

The check is registered in code rather than set in the app's `hydra:` config because that config is also composed
with other sweepers (`hydra/sweeper=basic`, as `python -m tasks.inspect` does), whose schema has no such key.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict, read_write
from optuna.distributions import BaseDistribution, CategoricalDistribution

from sweeper._grammar import SearchSpace

MAX_MESSAGE = 300
Compose = Callable[[list[str]], DictConfig]
Check = Callable[[DictConfig], None]
_registered: Check | None = None


def set_config_check(check: Check | None) -> None:
    """Register the app's check of a trial's composed config (`(cfg) -> None`, raising a one-line ValueError); the
    sweeper calls it for every swept value before the first trial. `hydra.sweeper.check` overrides it."""
    global _registered
    _registered = check


def registered_check() -> tuple[Check, str] | None:
    """The registered check and its name for messages (`sweep.check_trial_config`), if any."""
    if _registered is None:
        return None
    module = _registered.__module__
    if module == "__main__":  # the app's script: name it as the user knows it
        module = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else module
    return _registered, f"{module}.{_registered.__qualname__}"


def probe_values(dist: BaseDistribution) -> list[Any]:
    """The values probed for one parameter: every categorical choice, or the two ends of a range or interval."""
    values = list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]
    return list(dict.fromkeys(values))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def job_view(cfg: DictConfig) -> DictConfig:
    """The config as the job receives it: without the `hydra` node (as Hydra's run_job makes it)."""
    job = copy.deepcopy(cfg)
    with read_write(job), open_dict(job):
        job.pop("hydra", None)
    return job


def preflight(space: SearchSpace, compose: Compose, check: Check | None, check_name: str | None) -> None:
    """Raise ValueError (one line) when a probed trial config does not compose, or `check` refuses it; the error
    names the swept value(s) to blame."""
    first = {name: probe_values(p.distribution)[0] for name, p in space.params.items()}
    probes: list[tuple[str | None, dict[str, Any]]] = [(None, first)]
    for name, param in space.params.items():
        probes += [(name, {**first, name: value}) for value in probe_values(param.distribution)[1:]]
    refused: dict[tuple[str | None, Any], str] = {}
    for name, values in probes:
        overrides = space.overrides(values)
        try:
            cfg = compose(overrides)
        except Exception as e:
            raise ValueError(
                f"Every trial's overrides must compose with the app's config, but got {' '.join(overrides)}: "
                f"{_one_line(e)}"
            ) from None
        if check is None:
            continue
        try:
            check(job_view(cfg))
        except ValueError as e:
            refused[(name, values[name] if name else None)] = _one_line(e)
    if refused:
        blamed = _blame(space, first, refused)
        raise ValueError(
            f"Every swept value must pass the app's config check ({check_name}), but got {'; '.join(blamed)}."
        )


def _blame(space: SearchSpace, first: dict[str, Any], refused: dict[tuple[str | None, Any], str]) -> list[str]:
    """`key=value: message` for each refused value. When the first values fail together, the one to blame is the
    parameter whose other values pass (changing it alone fixes the config)."""
    out = [f"{space.params[n].override(v)}: {m}" for (n, v), m in refused.items() if n is not None]
    if (None, None) in refused:
        base = refused[(None, None)]
        culprits = [
            name
            for name, param in space.params.items()
            if any((name, v) not in refused for v in probe_values(param.distribution)[1:])
        ]
        if culprits:
            out = [f"{space.params[n].override(first[n])}: {base}" for n in culprits] + out
        else:
            fixed = " ".join(space.overrides(first)) or "the app's defaults"
            out = [f"{fixed}: {base}"] + [o for o in out if not o.endswith(base)]
    return list(dict.fromkeys(out))


def preflight_confirmation(space: SearchSpace, compose: Compose, check: Check | None, overrides: list[str]) -> None:
    """Before the search, when a confirmation phase follows: a confirmation run's overrides (`overrides`: the seed,
    phase and trial keys the app must have) compose and pass the app's check, so the search does not run in vain."""
    first = space.overrides({name: probe_values(p.distribution)[0] for name, p in space.params.items()})
    try:
        cfg = compose(first + overrides)
        if check is not None:
            check(job_view(cfg))
    except Exception as e:
        raise ValueError(
            f"A confirmation run (confirm.seeds > 0) sets {' '.join(overrides)}, which must compose with the app's "
            f"config and pass its check, but got: {_one_line(e)}; set hydra.sweeper.confirm.seeds=0 for an app "
            "without these keys."
        ) from None
