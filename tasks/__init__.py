"""Tasks: datasets turned into tokenized, cached splits, their losses and metrics.

The training loop lives in `tasks.train` (`tasks.train.trial.run_trial`), alpaca's generations and the LLM judge
in `tasks.judge`. Both, and the inspect command, use `get_task(cfg.task)` then `task.load(cfg.task, n_positions)`;
see ARCHITECTURE.md for the contract.
"""

from tasks.base import Task, TaskData
from tasks.batching import TokenizedSplit, iterate_batches
from tasks.registry import TASKS, get_task
from tasks.sources import DataError
from tasks.tokenizer import get_tokenizer

__all__ = ["TASKS", "DataError", "Task", "TaskData", "TokenizedSplit", "get_task", "get_tokenizer", "iterate_batches"]
