"""How a trial fails for a reason the user can act on; sweep.py prints these in one line, without a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot recover (lower optim.lr or enable grad_clip)."""


class TrialOutOfMemoryError(RuntimeError):
    """The device ran out of memory; the message names the settings that set the memory footprint."""


@contextlib.contextmanager
def out_of_memory_names_settings(cfg: Any, device: torch.device, precision: str, doing: str) -> Iterator[None]:
    """Turn the device's out-of-memory error while `doing` into one line naming the settings that set the size."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        tr = cfg.trainer
        settings = [
            f"model={cfg.model.name}", f"finetune={cfg.finetune.mode}", f"trainer.batch_size={tr.batch_size}",
            f"task.max_length={cfg.task.get('max_length')}", f"precision={precision}",
            f"grad_checkpointing={tr.grad_checkpointing}",
        ]  # fmt: skip
        if doing != "training":
            settings.append(f"trainer.eval_batch_size={tr.get('eval_batch_size')}")
            if cfg.task.name == "alpaca":
                settings.append(f"judge.generation.batch_size={cfg.judge.generation.batch_size}")
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrialOutOfMemoryError(
            f"out of memory on {device} while {doing} with {' '.join(settings)}: {first_line}"
        ) from exc
