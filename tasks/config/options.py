"""conf/'s groups and options, and one option's values typed by its schema, without composing the whole config.

`Task` fills a partial task config (`{"name": "sst2", "path": ...}`) from conf/task/<name>.yaml, and
`python -m tasks.judge` starts from conf/judge/gemini.yaml: the defaults stay in the YAML files, read here.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# groups whose options are the user's own or Hydra's, not the app's
NOT_APP_GROUPS = ("hydra", "local")
_PACKAGE = re.compile(r"^# @package (\S+)", re.MULTILINE)


@functools.cache
def groups() -> dict[str, tuple[str, ...]]:
    """Every config group of the app (conf/<group>/, nested ones as `a/b`) and its options, sorted."""
    out: dict[str, list[str]] = {}
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONF_DIR).as_posix()
        if group != "." and group.split("/")[0] not in NOT_APP_GROUPS:
            out.setdefault(group, []).append(path.stem)
    return {group: tuple(options) for group, options in out.items()}


def package_of(group: str, option: str) -> str:
    """Where an option's keys land: its `# @package`, else its group (`_global_`: the root)."""
    found = _PACKAGE.search((CONF_DIR / group / f"{option}.yaml").read_text(encoding="utf-8"))
    return found.group(1) if found else group.replace("/", ".")


def option_config(group: str, option: str) -> DictConfig:
    """conf/<group>/<option>.yaml over its defaults list (its schema, other options of its group), typed and in
    struct mode, as Hydra composes it for that group; interpolations are left as written.

    Raises:
        ValueError: no such option (the options are listed).
    """
    options = groups().get(group, ())
    if option not in options:
        raise ValueError(f"{group} must be one of {', '.join(options)}, but got {group}={option}")
    content = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    defaults = list(content.pop("defaults", None) or ["_self_"])
    if "_self_" not in defaults:
        defaults.append("_self_")
    node = OmegaConf.create()
    for entry in defaults:
        if entry == "_self_":
            part = content
        elif isinstance(entry, str) and entry.startswith("/"):  # a schema: /<name>@_here_
            part = ConfigStore.instance().load(entry[1:].split("@")[0] + ".yaml").node
        else:  # another option of the same group: `small`, `adamw`
            part = option_config(group, str(entry))
        node = OmegaConf.merge(node, part)
    OmegaConf.set_struct(node, True)
    return node  # type: ignore[return-value]
