"""The sweep trial this process runs, if any: the loop reports to it, the record attaches metrics.json to it."""

from __future__ import annotations

from typing import Any


def current_trial() -> Any:
    """The sweep trial this process runs, or None outside a sweep (or before the sweeper is installed)."""
    try:
        from sweeper import current_trial as sweeper_trial
    except ImportError:
        return None
    return sweeper_trial()


def trial_by_number(study_name: str, number: int) -> Any:
    """Trial `number` of the study this job's sweep runs (a packed job runs several), or None."""
    try:
        from sweeper import trial_handle
    except ImportError:
        return None
    return trial_handle(study_name, number)
