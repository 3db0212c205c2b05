"""Nothing of one trial survives into the next one that runs in the same process.

Hydra's basic launcher runs every job inside the sweep process, and a launcher's worker process may run several
jobs (joblib's loky pool). A failed or pruned job's exception carries a traceback whose frames hold everything the
trial built (model, optimizer, data, best weights): kept alive by the sweeper's JobReturn, it doubled the memory of
the next trial. So at the end of every job the frames of its exception are cleared, references to it are dropped,
and the process state a job may change is put back:

- `gc.collect()`: reference cycles (frames <-> exceptions, closures) go now, not at some later allocation;
- glibc's `malloc_trim(0)`: freed heap pages go back to the system (tensors freed in the middle of the heap stay
  resident otherwise, and the next trial's peak memory, measured from the resident set, would include them);
- torch, when the job imported it: the thread count as it was before the job (`torch.set_num_threads`), compiled
  graphs and their guards (`torch.compiler.reset()`, when dynamo was loaded), and the CUDA caching allocator's free
  blocks (`torch.cuda.empty_cache()`, when CUDA was initialised).

The sweeper does this around every in-process launch (`sweeper._loop`); an app whose jobs may run in reused worker
processes wraps its job in `isolated_job()` too (sweep.py does).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import traceback
from collections.abc import Iterator
from types import TracebackType

from common.allocator import release_free_memory

log = logging.getLogger(__name__)


def forget_frames(error: BaseException | None) -> None:
    """Clear the local variables of every finished frame in the tracebacks of `error`, its causes and contexts.

    The traceback text (files, lines, code) stays printable; what the frames referenced is released.
    """
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending += [current.__cause__, current.__context__]


def _torch():  # the job's torch, if it imported one; never imported here
    return sys.modules.get("torch")


def thread_count() -> int | None:
    torch = _torch()
    return torch.get_num_threads() if torch is not None else None


def release(threads_before: int | None) -> None:
    """Collect garbage and put back what a job may have changed in torch (see the module docstring)."""
    gc.collect()
    release_free_memory()
    torch = _torch()
    if torch is None:
        return
    if threads_before is not None and torch.get_num_threads() != threads_before:
        log.debug("restoring torch's thread count to %d (the job set %d)", threads_before, torch.get_num_threads())
        torch.set_num_threads(threads_before)
    if "torch._dynamo" in sys.modules:
        torch.compiler.reset()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class JobBoundary:
    """`with boundary:` around one job: records torch's thread count before it, releases (see `release`) after."""

    def __init__(self) -> None:
        self._threads: int | None = None

    def __enter__(self) -> JobBoundary:
        self._threads = thread_count()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        forget_frames(exc)  # an exception leaving the job still prints, but no longer holds the trial
        release(self._threads)


@contextlib.contextmanager
def isolated_job() -> Iterator[None]:
    """For a job function: whatever it raises or returns, its trial's memory and torch settings do not outlive it."""
    with JobBoundary():
        yield
