"""Every option of every config group composes through Hydra and passes the trial's config check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.settings import ConfigError, check_config

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "task", "finetune", "optim", "schedule", "trainer", "judge", "experiment", "hparams_search")
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} >= {"model", "task", "finetune", "optim", "schedule", "trainer", "judge"}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_option_composes_and_checks(group, option, compose_cfg):
    cfg = compose_cfg(f"{group}={option}")
    if group in ("model", "task", "finetune", "optim", "schedule"):
        assert cfg[group].name if group != "finetune" else cfg.finetune.mode
    from model import PRESETS

    preset = PRESETS[cfg.model.preset]
    check_config(cfg, n_layer=preset["n_layer"] if isinstance(preset, dict) else preset.n_layer)
    assert cfg.direction in ("maximize", "minimize") or list(cfg.direction)


@pytest.mark.parametrize(
    ("task", "objective", "direction"),
    [("sst2", "accuracy", "maximize"), ("alpaca", "perplexity", "minimize")],
)
def test_objective_and_direction_follow_the_task(task, objective, direction, compose_cfg):
    cfg = compose_cfg(f"task={task}")
    assert (cfg.objective, cfg.direction) == (objective, direction)
    assert compose_cfg(f"task={task}", "objective=judge").direction == "maximize"


def test_config_check_reports_every_problem_at_once(compose_cfg):
    cfg = compose_cfg("lora.rank=-1", "trainer.batch_size=0", "schedule.warmup_ratio=2")
    with pytest.raises(ConfigError) as err:
        check_config(cfg, n_layer=12)
    message = str(err.value)
    assert "\n" not in message
    for field in ("lora.rank=-1", "trainer.batch_size=0", "schedule.warmup_ratio=2"):
        assert field in message
