"""How a trial fails for a reason the user can act on; sweep.py prints these in one line, without a traceback."""

from __future__ import annotations


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot recover (lower optim.lr or enable grad_clip)."""


class TrialOutOfMemoryError(RuntimeError):
    """The device ran out of memory; the message names the settings that set the memory footprint."""
