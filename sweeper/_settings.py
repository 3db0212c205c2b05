"""The sweeper's keys, checked once when Hydra builds the sweeper: one rule, one error, in Optuna's form.

The sweeper is a Hydra plugin that knows nothing of the app (it may sweep any Hydra app), so its rules live here
beside its schema (`sweeper._config.LorasweepSweeperConf`), not with the app's (`tasks.config.checks`). Hydra calls
`build_settings` directly with the node's values, and a key added with `+hydra.sweeper...` reaches it too: the
unknown-key check is kept for that.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.errors import CompactHydraException
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeper._config import PRUNERS, SAMPLERS, LorasweepSweeperConf
from sweeper._confirm_settings import ConfirmSettings, confirm_settings
from sweeper._storage import STORAGE_SCHEMES, mask_url, url_scheme

DIRECTIONS = ("minimize", "maximize")
# several workers: heartbeats, stale trials, reconnection (keys hydra-optuna-sweeper does not have)
LIVENESS_KEYS = ("heartbeat_interval", "grace_period", "max_retry", "reconnect_timeout")
# other keys hydra-optuna-sweeper does not have: a config written for it lacks them, so they take their defaults
OWN_KEYS = (*LIVENESS_KEYS, "extend_study", "check", "confirm", "pack")
KEYS = (
    "sampler",
    "pruner",
    "direction",
    "objective",
    "storage",
    "study_name",
    "extend_study",
    "n_trials",
    "n_jobs",
    "max_failure_rate",
    "params",
    "search_space",
    "custom_search_space",
    "check",
    *LIVENESS_KEYS,
    "confirm",
    "pack",
)


class SweepError(CompactHydraException, ValueError):
    """A bad search space, study or outcome of the sweep: Hydra prints only the message, no traceback."""


@dataclass(frozen=True)
class Settings:
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    directions: list[str]
    metric_names: list[str] | None
    storage: str | None
    study_name: str | None
    extend_study: bool
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    params: dict[str, Any]
    custom_search_space: str | None
    check: str | None
    heartbeat_interval: int | None
    grace_period: int | None
    max_retry: int | None
    reconnect_timeout: float
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)
    pack_size: int = 1  # trials per job over one shared base (sweeper._pack); 1 = no packing

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1

    @property
    def grace_s(self) -> int | None:
        """The grace period in effect: Optuna's default is twice the heartbeat interval."""
        if self.heartbeat_interval is None:
            return None
        return self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build_settings(**raw: Any) -> Settings:
    """Validate `hydra.sweeper.*` (as Hydra passes them) into Settings; raise ValueError on the first bad key."""
    cfg = _with_defaults(raw)
    directions, names = _objectives(cfg)
    _check_study(cfg)
    params = _params(cfg)
    _check_hooks(cfg)
    _check_liveness(cfg)
    pack_size = _pack_size(cfg["pack"])
    confirm = confirm_settings(cfg["confirm"])
    if confirm.enabled and len(directions) > 1:
        raise ValueError(
            "`confirm.seeds` needs a single objective to rank configurations by, but got "
            f"confirm.seeds={confirm.seeds} with direction={directions}; set confirm.seeds=0."
        )
    _check_plugins(cfg)
    return Settings(
        sampler=dict(cfg["sampler"]),
        pruner=dict(cfg["pruner"]),
        directions=directions,
        metric_names=names,
        storage=cfg["storage"],
        study_name=cfg["study_name"],
        extend_study=cfg["extend_study"],
        n_trials=cfg["n_trials"],
        n_jobs=cfg["n_jobs"],
        max_failure_rate=float(cfg["max_failure_rate"]),
        params=params,
        custom_search_space=cfg["custom_search_space"],
        check=cfg["check"],
        heartbeat_interval=cfg["heartbeat_interval"],
        grace_period=cfg["grace_period"],
        max_retry=cfg["max_retry"],
        reconnect_timeout=float(cfg["reconnect_timeout"]),
        confirm=confirm,
        pack_size=pack_size,
    )


def _with_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Every key, as plain values; an unknown key is refused with the nearest real one."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        near = {k: difflib.get_close_matches(k, KEYS, n=1) for k in unknown}
        hints = "".join(f" (did you mean {near[k][0]} for {k}?)" for k in unknown if near[k])
        raise ValueError(f"hydra.sweeper keys must be in {list(KEYS)}, but got unknown keys {unknown}{hints}.")
    cfg = {key: _plain(raw.get(key)) for key in KEYS}
    for key in OWN_KEYS:  # added after hydra-optuna-sweeper: a config written for it lacks them
        if key not in raw:
            cfg[key] = getattr(LorasweepSweeperConf, key, None)  # None: a node with its own default (confirm, pack)
    return cfg


def _objectives(cfg: dict[str, Any]) -> tuple[list[str], list[str] | None]:
    """`direction` and `objective` as lists of the same length (the names may be unset)."""
    direction = cfg["direction"]
    directions = [direction] if isinstance(direction, str) else direction
    if not isinstance(directions, list) or not directions or not all(d in DIRECTIONS for d in directions):
        raise ValueError(
            f"`direction` must be 'minimize', 'maximize' or a non-empty list of them, but got direction={direction!r}."
        )
    objective = cfg["objective"]
    names = [objective] if isinstance(objective, str) else objective
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"`objective` must be a name or a list of names, but got objective={objective!r}.")
    if names is not None and len(names) != len(directions):
        raise ValueError(
            "`objective` and `direction` must have the same length (one direction per objective), "
            f"but got objective={names} and direction={directions}."
        )
    return list(directions), list(names) if names is not None else None


def _check_study(cfg: dict[str, Any]) -> None:
    """Where the study lives and how many trials it runs."""
    storage = cfg["storage"]
    if storage is not None and (not isinstance(storage, str) or url_scheme(storage) not in STORAGE_SCHEMES):
        shown = mask_url(storage) if isinstance(storage, str) else repr(storage)
        raise ValueError(
            "`storage` must be null, a database URL (sqlite:///<file>, postgresql+psycopg://..., mysql://...) "
            f"or journal:///<file>, but got storage={shown}."
        )
    study_name = cfg["study_name"]
    if study_name is not None and (not isinstance(study_name, str) or not study_name.strip()):
        raise ValueError(f"`study_name` must be null or a non-empty string, but got study_name={study_name!r}.")
    if not isinstance(cfg["extend_study"], bool):
        raise ValueError(f"`extend_study` must be true or false, but got extend_study={cfg['extend_study']!r}.")
    for key in ("n_trials", "n_jobs"):
        if not _is_int(cfg[key]) or cfg[key] < 1:
            raise ValueError(f"`{key}` must be a positive integer, but got {key}={cfg[key]!r}.")
    rate = cfg["max_failure_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0.0 <= rate <= 1.0):
        raise ValueError(f"`max_failure_rate` must be between 0 and 1 inclusive, but got max_failure_rate={rate!r}.")


def _params(cfg: dict[str, Any]) -> dict[str, Any]:
    """`params` (key -> sweep in the override grammar); the plugin's removed `search_space` names its successor."""
    params = cfg["params"] or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"`params` must be a mapping of key to sweep (lora.rank: 4,8,16), but got params={params!r}.")
    if cfg["search_space"]:
        raise ValueError(
            "`search_space` was replaced by `params` in hydra-optuna-sweeper 1.2: write each entry in the override "
            f"grammar (optim.lr: tag(log, interval(1e-5, 1e-3))), but got search_space={cfg['search_space']!r}."
        )
    return {str(k): v for k, v in params.items()}


def _check_hooks(cfg: dict[str, Any]) -> None:
    """The user's functions, named by dotted path."""
    for key, signature in (("custom_search_space", "(cfg, trial)"), ("check", "(cfg)")):
        path = cfg[key]
        if path is not None and (not isinstance(path, str) or "." not in path):
            raise ValueError(
                f"`{key}` must be the dotted path of a function {signature} -> None, but got {key}={path!r}."
            )


def _check_plugins(cfg: dict[str, Any]) -> None:
    """The sampler and pruner nodes: configs Hydra can instantiate."""
    for group in ("sampler", "pruner"):
        node = cfg[group]
        if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
            raise ValueError(
                f"`{group}` must be a config with a `_target_` (select one with hydra/sweeper/{group}=<name>), "
                f"but got {group}={node!r}."
            )


def _pack_size(pack: Any) -> int:
    """`pack.size`: trials trained together in one job (1 = each alone)."""
    if pack is None:
        return 1
    if not isinstance(pack, Mapping) or set(pack) - {"size"}:
        raise ValueError(f"`pack` must be a mapping with the key size (pack.size=4), but got pack={pack!r}.")
    size = pack.get("size", 1)
    if not _is_int(size) or size < 1:
        raise ValueError(f"`pack.size` must be an integer >= 1 (1 = no packing), but got pack.size={size!r}.")
    return size


def _check_liveness(cfg: dict[str, Any]) -> None:
    """Heartbeats, stale trials and reconnection: whole seconds as Optuna's RDBStorage takes them."""
    for key in ("heartbeat_interval", "grace_period"):
        value = cfg[key]
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"`{key}` must be null or a positive integer (seconds), but got {key}={value!r}.")
    interval, grace = cfg["heartbeat_interval"], cfg["grace_period"]
    if grace is not None and interval is None:
        raise ValueError(
            "`grace_period` needs heartbeats (set heartbeat_interval, or grace_period=null), "
            f"but got grace_period={grace} and heartbeat_interval=null."
        )
    if grace is not None and grace <= interval:
        raise ValueError(
            "`grace_period` must be longer than `heartbeat_interval` (a live trial beats once per interval), "
            f"but got grace_period={grace} and heartbeat_interval={interval}."
        )
    retry = cfg["max_retry"]
    if retry is not None and (not _is_int(retry) or retry < 0):
        raise ValueError(f"`max_retry` must be null (no limit) or a non-negative integer, but got max_retry={retry!r}.")
    timeout = cfg["reconnect_timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 <= timeout < math.inf):
        raise ValueError(
            f"`reconnect_timeout` must be a non-negative number of seconds, but got reconnect_timeout={timeout!r}."
        )


def config_class(group: str, target: str, base: type) -> type:
    """The class a `sampler` or `pruner` config's `_target_` names, checked to be a subclass of `base`."""
    options = ", ".join(SAMPLERS if group == "sampler" else PRUNERS)
    try:
        cls = get_class(target)
    except Exception as e:
        raise ValueError(
            f"`{group}._target_` must name an Optuna {group} class (hydra/sweeper/{group}: {options}), "
            f"but got _target_={target!r} ({e})."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"`{group}._target_` must be a subclass of {base.__name__}, but got _target_={target!r}.")
    return cls


def failures_allowed(settings: Settings, n_trials: int | None = None) -> int:
    """Failed trials a sweep run tolerates before it stops: max_failure_rate x n_trials, rounded down; `n_trials`
    is the budget in effect (a grid or a finite search space of fewer points runs fewer trials)."""
    return math.floor(settings.max_failure_rate * (settings.n_trials if n_trials is None else n_trials) + 1e-9)
