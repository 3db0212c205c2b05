"""Task names -> task classes: `get_task(cfg.task)` is how the trainer and `tasks.inspect` build a task.

Adding a task is one module with a `Task` subclass, one line here and one conf/task/<name>.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from tasks.alpaca import Alpaca
from tasks.base import Task
from tasks.classification import SST2, AGNews, SMSSpam, TextClassification

TASKS: dict[str, type[Task]] = {
    "alpaca": Alpaca,
    "sst2": SST2,
    "ag_news": AGNews,
    "sms_spam": SMSSpam,
    "text_classification": TextClassification,
}


def get_task(task_cfg: Mapping[str, Any] | DictConfig | str) -> Task:
    """The task named by ``task_cfg.name`` (or the name itself), its settings checked.

    Raises:
        ValueError: unknown task name (the valid ones are listed) or invalid settings.
    """
    name = task_cfg if isinstance(task_cfg, str) else task_cfg.get("name")
    if name not in TASKS:
        raise ValueError(f"task.name must be one of {', '.join(TASKS)}, but got name={name!r}")
    return TASKS[name](None if isinstance(task_cfg, str) else task_cfg)
