"""conf/ as a user meets it: every file composes where it belongs, every preset passes a trial's checks before any
data or model, and the defaults the documentation states are the config's."""

from __future__ import annotations

import logging
import re
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from tasks.config.checks import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# every config group with options a user picks (conf/local/ is the user's own, git-ignored)
GROUP_DIRS = sorted(
    p.parent.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml") if p.parent != CONF and p.parent.name != "local"
)
OPTIONS = sorted({(group, path.stem) for group in GROUP_DIRS for path in (CONF / group).glob("*.yaml")})
PRESETS = [(g, o) for g, o in OPTIONS if g in ("experiment", "hparams_search")]
INTERPOLATION = re.compile(r"\$\{")


def leaves(node: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Key path → value of every leaf of a config file's content (keys may hold dots: `params: {lora.rank: ...}`)."""
    if isinstance(node, dict):
        out: dict[tuple[str, ...], Any] = {}
        for key, value in node.items():
            out.update(leaves(value, (*path, str(key))))
        return out
    return {path: node}


def at(cfg: Any, path: tuple[str, ...]) -> Any:
    node = cfg
    for key in path:
        if not OmegaConf.is_dict(node) or key not in node:
            return "<missing>"
        node = node[key]
    return node


def package_of(group: str, option: str) -> str:
    from tasks.config.options import package_of

    return package_of(group, option)


def file_content(group: str, option: str) -> tuple[tuple[str, ...], dict[tuple[str, ...], Any]]:
    """Where the option's keys land (its `@package`, else the group path) and its own leaves."""
    path = CONF / group / f"{option}.yaml"
    header = re.search(r"^# @package (\S+)", path.read_text(), re.MULTILINE)
    package = header.group(1) if header else group.replace("/", ".")
    content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(content, dict)
    content.pop("defaults", None)
    return (() if package == "_global_" else tuple(package.split("."))), leaves(content)


# --------------------------------------------------------------------------------------------- every file


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_selected_with_its_own_values_in_place(group, option, compose_cfg):
    extra = ["task.path=."] if option == "text_classification" else []  # your own data: no default file
    cfg = compose_cfg(f"{group}={option}", *extra)
    assert cfg.hydra.runtime.choices[group] == option
    package, values = file_content(group, option)
    if group in ("experiment", "hparams_search"):  # presets over the whole config, not a node of their own
        assert package == (), f"conf/{group}/{option}.yaml must start with `# @package _global_`"
    for key, value in values.items():
        where = ".".join((*package, *key))
        if (isinstance(value, str) and INTERPOLATION.search(value)) or f"{where}=." in extra:
            continue  # resolved at run time, e.g. ${task.name}; or set above
        composed = at(cfg, (*package, *key))
        if OmegaConf.is_config(composed):
            composed = OmegaConf.to_container(composed, resolve=False)
        if isinstance(composed, Enum):  # hydra.mode: MULTIRUN
            composed = composed.name
        assert composed == value, (
            f"conf/{group}/{option}.yaml sets {'.'.join(key)}={value!r}, the composed {where}={composed!r}"
        )
    if group not in ("hydra", "hydra/launcher"):
        check_config(cfg)
        assert_composed_against_its_schema(cfg, group, option)


def assert_composed_against_its_schema(cfg: DictConfig, group: str, option: str) -> None:
    """Typed by the schemas, every key of them given a value, no key they lack."""
    from tasks.config.keys import unknown_keys
    from tasks.config.schema import SCHEMAS

    assert OmegaConf.get_type(cfg) is SCHEMAS["schema_config"]
    node = package_of(group, option)
    if node in cfg and OmegaConf.is_dict(cfg[node]):
        kind = OmegaConf.get_type(cfg[node])
        assert kind.__module__ == "tasks.config.schema", f"conf/{group}/{option}.yaml has no schema, but got {kind}"
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    assert not OmegaConf.missing_keys(job), f"conf/ gives no value to {sorted(OmegaConf.missing_keys(job))}"
    assert unknown_keys(cfg) == []


def test_the_schemas_hold_types_only_and_conf_the_defaults():
    """A default is written once: in conf/ (with its comment), never again in a schema or a task class."""
    from dataclasses import MISSING, fields, is_dataclass

    from tasks import TASKS
    from tasks.config.schema import SCHEMAS

    for name, schema in SCHEMAS.items():
        for f in fields(schema):
            if f.default_factory is not MISSING:  # a nested node: its own schema, itself without defaults
                assert is_dataclass(f.default_factory()), f"{name}.{f.name}"
            else:
                assert f.default == "???", f"{name}.{f.name} declares a default ({f.default!r}); conf/ holds it"
    assert not any(hasattr(task, "defaults") for task in TASKS.values())


def test_the_defaults_are_the_documented_first_run(compose_cfg):
    """`python sweep.py` alone: GPT-2 small, LoRA r=8 alpha=16, SMS spam, accuracy maximised, our sweeper."""
    cfg = compose_cfg()
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.task, choices.finetune, choices.optim, choices.schedule) == (
        "small", "sms_spam", "lora", "adamw", "cosine",
    )  # fmt: skip
    assert (cfg.model.hub_id, cfg.model.pretrained) == ("openai-community/gpt2", True)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.freeze.blocks) == (8, 16, 0)
    assert (cfg.objective, cfg.direction) == ("accuracy", "maximize")
    assert choices["hydra/sweeper"] == "lorasweep"
    assert (cfg.trainer.reuse, cfg.judge.structured_output, cfg.trainer.max_eval_batches) == (
        "same_version",
        True,
        None,
    )


# --------------------------------------------------------------------------------- presets: a dry setup


def dry_setup(cfg: DictConfig, caplog: pytest.LogCaptureFixture) -> None:
    """What a trial checks before any data or model: config, task settings, judge, objective, runtime, preset."""
    from tasks import get_task
    from tasks.judge.settings import JudgeSettings
    from tasks.train.objective import Objective
    from tasks.train.runtime import resolve_runtime

    check_config(cfg)
    with caplog.at_level(logging.WARNING, logger="tasks.base"):
        get_task(cfg.task)
    assert not [r.getMessage() for r in caplog.records if "ignores unknown settings" in r.getMessage()]
    JudgeSettings.from_config(cfg.judge)
    Objective.from_config(cfg.objective)
    resolve_runtime("cpu" if cfg.trainer.device in ("auto", "cuda", "mps") else cfg.trainer.device, "fp32")


def searched_values(distribution: Any) -> list[Any]:
    """Every choice of a categorical, both ends of a range or an interval."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


@pytest.mark.parametrize(("group", "option"), PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_every_preset_and_every_value_it_searches_passes_a_one_step_dry_setup(group, option, compose_cfg, caplog):
    from sweeper import parse_search_space

    cfg = compose_cfg(f"{group}={option}", "trainer.max_steps=1")
    dry_setup(cfg, caplog)
    params = OmegaConf.to_container(cfg.hydra.sweeper.get("params") or {}, resolve=False)
    space = parse_search_space([f"{k}={v}" for k, v in params.items()])
    assert space.params, f"conf/{group}/{option}.yaml searches nothing"
    for name, param in space.params.items():
        is_group = (CONF / name).is_dir()
        assert is_group or OmegaConf.select(cfg, name, default="<missing>") != "<missing>", (
            f"conf/{group}/{option}.yaml searches {name}, which is no config key or group"
        )
        for value in searched_values(param.distribution):
            if is_group or isinstance(value, str):  # an option, or text to parse (a list: [q,v]): compose it
                dry_setup(compose_cfg(f"{group}={option}", "trainer.max_steps=1", param.override(value)), caplog)
            else:
                trial_cfg = cfg.copy()
                OmegaConf.update(trial_cfg, name, value, merge=False)
                check_config(trial_cfg)


# ----------------------------------------------------------------------------- what the docs promise

DOC_TABLES = {  # page → (the heading above the table, the config node its keys belong to)
    "docs/configuration.md": [("**`trainer`**", "trainer"), ("**`lora`**", "lora"), ("**`paths`**", None)],
    "docs/judge.md": [("## Settings", "judge")],
}
LITERAL = re.compile(r"^`([^`]*)`$")


def documented_defaults(page: str, heading: str) -> dict[str, str]:
    """`key` → default text of the table under `heading` whose default cell is exactly one literal."""
    text = (ROOT / page).read_text()
    table = text[text.index(heading) :].split("\n\n| ", 1)[1].split("\n\n", 1)[0]
    out = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        keys = re.findall(r"`([\w.]+)`", cells[0])
        literal = LITERAL.match(cells[1])
        if len(keys) == 1 and literal:
            out[keys[0]] = literal.group(1)
    return out


@pytest.mark.parametrize(
    ("page", "heading", "node"), [(p, h, n) for p, tables in DOC_TABLES.items() for h, n in tables if n]
)
def test_documented_defaults_are_the_configs(page, heading, node, compose_cfg):
    cfg = compose_cfg()
    documented = documented_defaults(page, heading)
    assert len(documented) >= 5, f"{page}: the table under {heading} was not found or changed shape"
    for key, text in documented.items():
        actual = OmegaConf.select(cfg[node], key, default="<missing>")
        if OmegaConf.is_config(actual):
            actual = OmegaConf.to_container(actual)
        expected = OmegaConf.create({"v": OmegaConf.from_dotlist([f"v={text}"]).v}).v  # YAML, as Hydra reads it
        if OmegaConf.is_config(expected):
            expected = OmegaConf.to_container(expected)
        assert actual == expected, f"{page} says {node}.{key} defaults to {text}, conf/ has {actual!r}"


# ----------------------------------------------------------------------------- objective and checks


@pytest.mark.parametrize(
    ("task", "objective", "direction"),
    [("sst2", "accuracy", "maximize"), ("ag_news", "accuracy", "maximize"), ("alpaca", "perplexity", "minimize")],
)
def test_objective_and_direction_follow_the_task(task, objective, direction, compose_cfg):
    cfg = compose_cfg(f"task={task}")
    assert (cfg.objective, cfg.direction) == (objective, direction)
    assert compose_cfg(f"task={task}", "objective=judge").direction == "maximize"
    assert compose_cfg(f"task={task}", "objective=loss").direction == "minimize"


def test_config_check_reports_every_problem_at_once(compose_cfg):
    cfg = compose_cfg("lora.rank=-1", "trainer.batch_size=0", "schedule.warmup_ratio=2", "trainer.reuse=sometimes")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert "\n" not in message
    for field in ("lora.rank=-1", "trainer.batch_size=0", "schedule.warmup_ratio=2", "trainer.reuse='sometimes'"):
        assert field in message
