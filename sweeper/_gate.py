"""Launches side by side, or one alone: how a broken process pool fails only the trial that broke it.

Hydra's joblib launcher runs every job on loky's shared process pool. When one job kills its worker process
(`kill -9`, the OOM killer, a segfault), loky terminates the whole pool, and every trial in flight gets the same
`TerminatedWorkerError`, though only one of them caused it. A trial whose launch failed that way while other
launches were in flight is therefore run again alone (on a fresh pool, with no other launch beside it): the
innocent ones complete, the guilty one breaks its pool again and is FAIL. A launch that ran alone is not re-run.
Trials that finished before the pool broke keep their results; nothing finished is run twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor


class Launch:
    """One launch through the gate; `overlapped` tells whether another launch ran at the same time."""

    def __init__(self, overlapped: bool) -> None:
        self.overlapped = overlapped


def broke_the_pool(error: BaseException | None) -> bool:
    """The launcher's process pool died under the job (loky's TerminatedWorkerError is a BrokenExecutor)."""
    return isinstance(error, BrokenExecutor)


class LaunchGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: list[Launch] = []
        self._alone = False
        self._waiting_alone = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[Launch]:
        """A launch beside others (waits while one runs alone or waits to)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._waiting_alone)
            launch = Launch(overlapped=bool(self._active))
            for other in self._active:
                other.overlapped = True
            self._active.append(launch)
        try:
            yield launch
        finally:
            with self._cond:
                self._active.remove(launch)
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[Launch]:
        """A launch with nothing beside it: waits for the launches in flight, holds new ones back."""
        with self._cond:
            self._waiting_alone += 1
            self._cond.wait_for(lambda: not self._alone and not self._active)
            self._waiting_alone -= 1
            self._alone = True
        try:
            yield Launch(overlapped=False)
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()
