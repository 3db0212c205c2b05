"""Keys no trial reads, and options no group has: found, and named in one line with the nearest real one.

Three ways a wrong key or option reaches us, one wording for all ("condition, but got name=value (did you mean
...?)"):

- Hydra refuses it while composing (`trainer.lr=1e-4`, `model=tinny`, `trainer.batch_size=abc`): the entry points
  (`tasks.config.cli`) turn its exception into `composition_problems`, which also checks every other override on the
  command line, so all of them are named at once;
- Hydra adds it (`+trainer.lr=1e-4` adds keys even in struct mode, `+modle=tiny` a top-level one): `unknown_keys`
  walks the composed config against the schema each node was typed by (`check_config` runs it on every trial);
- a partial config merged into a schema (a task built from a dict, a judge re-score): `schema_problem`.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import fields, is_dataclass
from typing import Any, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from tasks.config import options, schema

UNKNOWN = "every key must be a setting a trial reads"
_SECRET = re.compile(r"api_key|token|password|secret", re.IGNORECASE)


@functools.cache
def known_keys() -> tuple[str, ...]:
    """Every dotted key of the config's schema (every variant of a node), and every group name."""
    return tuple(dict.fromkeys([*schema.schema_keys(), *options.groups()]))


def suggest(key: str, value: str | None = None, within: Iterable[str] | None = None) -> str:
    """ " (did you mean optim.lr?)" for `trainer.lr`, " (did you mean model=tiny?)" for `modle` with value tiny;
    "" when nothing is close. `within` narrows the candidates (default: every key and group)."""
    candidates = [c for c in (within if within is not None else known_keys()) if c != key]
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf and c != key]
    close = same_leaf or difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        leaves = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)]
    if not close:
        return ""
    best = close[0]
    shown = f"{best}={value}" if value is not None and best in options.groups() else best
    return f" (did you mean {shown}?)"


def unknown(key: str, value: Any) -> str:
    """`key=value (did you mean ...?)`: one refused key as the error names it (a secret's value is not shown)."""
    text = "***" if _SECRET.search(key) else _text(value)
    if key in known_keys():  # task.prompt_style with task=sms_spam
        return f"{key}={text} (a setting of another {key.split('.')[0]} option than the one chosen)"
    return f"{key}={text}{suggest(key, text)}"


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Every key of `cfg` that the schema of its node does not have, as `key=value (did you mean ...?)`; the
    root's `hydra` node is Hydra's own. Nodes typed by no schema (plain dicts) are not judged."""
    found: list[str] = []
    _walk(cfg, "", found)
    return found


def _walk(node: DictConfig, prefix: str, found: list[str]) -> None:
    kind = OmegaConf.get_type(node)
    names = {f.name for f in fields(kind)} if kind is not None and is_dataclass(kind) else None
    raw = OmegaConf.to_container(node, resolve=False)  # the values as written: nothing resolved to name them
    assert isinstance(raw, dict)
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if path == "hydra":
            continue
        if names is not None and key not in names:
            found.append(unknown(path, value))
        elif isinstance(value, dict):
            _walk(node[key], f"{path}.", found)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace("'", "").replace(" ", "")


# --------------------------------------------------------------------------------- a value against its type


TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def expected_type(cls: type, name: str) -> str:
    """ "an integer", "a number or null", "a list": how a schema field's type reads in an error."""
    hint = get_type_hints(cls).get(name)
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    optional = hint is not None and type(None) in getattr(hint, "__args__", ())
    base = args[0] if optional and args else hint
    word = TYPE_WORDS.get(base) or ("a list" if getattr(base, "__origin__", None) is list else str(base))
    return word + (" or null" if optional else "")


def schema_problem(error: OmegaConfBaseException, given: Any = None, prefix: str = "", *, value: Any = None) -> str:
    """One line for OmegaConf's refusal of a value or key while merging `given` (a mapping; or the `value` itself)
    into a schema; `prefix` is where the node sits in the whole config (`task.`), for the key the message names."""
    inner = str(getattr(error, "full_key", "") or getattr(error, "key", "") or "?")
    key = prefix + inner
    if given is not None:
        value = OmegaConf.select(OmegaConf.create(given), inner, default=None)
    parent = getattr(error, "object_type", None)
    if isinstance(error, ConfigKeyError) or "not in" in str(error).split("\n")[0]:
        if key.startswith("hydra.") and parent is not None and is_dataclass(parent):  # e.g. the sweeper's keys
            node = key.rsplit(".", 1)[0]
            near = suggest(key, within=[f"{node}.{f.name}" for f in fields(parent)])
            return f"every key of {node} must be one it has, but got {key}={_text(value)}{near}"
        return f"{UNKNOWN}, but got {unknown(key, value)}"
    if isinstance(error, ValidationError) and parent is not None and is_dataclass(parent):
        return f"{key} must be {expected_type(parent, key.rsplit('.', 1)[-1])}, but got {key}={_text(value)}"
    return " ".join(str(error).split())


# --------------------------------------------------------------------------------- the command line


def override_problems(overrides: Sequence[str]) -> list[str]:
    """What the command line's overrides name that the app does not have: a group option no group has, a key no
    schema has (Hydra's own `hydra.*` keys and groups are Hydra's to judge). Every override is looked at."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    problems: list[str] = []
    bad_keys: list[str] = []
    groups = options.groups()
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        name = override.key_or_group
        if name == "hydra" or name.startswith(("hydra.", "hydra/")) or override.is_delete():
            continue
        text = override.value()
        values = list(text.list) if isinstance(text, ChoiceSweep) else [override.value()]
        if name in groups:
            missing = [str(v) for v in values if isinstance(v, str) and v not in groups[name]]
            problems += [
                f"{name} must be one of {', '.join(groups[name])}, but got {name}={v}{suggest(v, within=groups[name])}"
                for v in missing
            ]
        elif name not in known_keys():
            shown = override.input_line.split("=", 1)
            bad_keys.append(f"{shown[0]}={shown[1]}{suggest(name, shown[1])}" if len(shown) == 2 else shown[0])
    if bad_keys:
        problems.insert(0, f"{UNKNOWN}, but got {', '.join(bad_keys)}")
    return problems


def composition_problems(error: BaseException, overrides: Sequence[str]) -> list[str]:
    """Why Hydra could not compose with these overrides, one line each: every override that names no key or option
    (`override_problems`); else Hydra's own error in our wording where it says which key or option (an option a
    file's defaults list names, a key another option's schema has, a type), squeezed onto one line otherwise."""
    from hydra.errors import MissingConfigException

    problems = list(dict.fromkeys(override_problems(overrides)))
    if problems:
        return problems
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return [
            f"{group} must be one of {', '.join(error.options)}, but got {group}={option}"
            f"{suggest(option, within=error.options)}"
        ]
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        written = dict(item.lstrip("+~").partition("=")[::2] for item in overrides)
        return [schema_problem(cause, value=written.get(str(cause.full_key)))]
    return [" ".join(str(error).split())]
