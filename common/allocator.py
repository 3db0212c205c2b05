"""glibc's allocator for CPU training: opt-in tuning that keeps freed memory, and handing kept memory back.

glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh `mmap`s and returns them on `free`, and
trims the heap top when more than the trim threshold is free; a training step frees and reallocates the same large
tensors every step, so the kernel zeroes and faults those pages in again each time (bench/train_step.py counts the
minor faults). With `LORASWEEP_MALLOC=tuned` the trial process turns both off (`mallopt`), so freed blocks are
reused in place. The cost: memory freed after the peak stays with the process until it exits (RSS stays near the
peak). tcmalloc or jemalloc preloaded (`LD_PRELOAD`) get a similar effect without code; see BENCHMARKS.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

ENV = "LORASWEEP_MALLOC"
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
_TRIM = 2**31 - 1  # the largest value mallopt takes (an int): keep up to 2 GiB of free heap top
_TOP_PAD = 64 * 2**20  # grow the heap in 64 MiB steps: fewer brk calls
# the same settings as the environment variables glibc reads at start-up (for a process launched with them)
GLIBC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_TRIM), "MALLOC_TOP_PAD_": str(_TOP_PAD)}
_applied = False


def tune_glibc_malloc() -> bool:
    """Make glibc keep freed memory (no mmap for large blocks, no heap trimming); True when applied.

    A no-op (False) outside glibc, e.g. on macOS or musl, or with another allocator preloaded.
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    ok = all(libc.mallopt(p, v) == 1 for p, v in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _TRIM), (M_TOP_PAD, _TOP_PAD)))
    if ok:
        _applied = True
        logger.info("glibc malloc tuned (%s=tuned): no mmap for large blocks, no heap trimming", ENV)
    return ok


def maybe_tune_malloc() -> bool:
    """Apply `tune_glibc_malloc` when `LORASWEEP_MALLOC=tuned`; the default leaves the allocator alone."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "default", "0", "off"):
        return False
    if value != "tuned":
        raise ValueError(f"`{ENV}` must be one of tuned, default, but got {ENV}={value!r}")
    return tune_glibc_malloc()


def release_free_memory() -> bool:
    """Give the memory glibc keeps for reuse back to the system (`malloc_trim(0)`, all arenas); True when done.

    Between trials of one process: tensors a trial freed inside glibc's heap (fragmented, or kept under
    `LORASWEEP_MALLOC=tuned`) would otherwise stay resident and count in the next trial's peak memory. False
    outside glibc or with another allocator preloaded (tcmalloc, jemalloc keep their own pools).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)  # 1 when memory was released, 0 when there was none to release: both leave nothing kept
    return True


@functools.cache
def _glibc() -> Any:
    """This process's glibc, or None: another allocator preloaded, or not glibc (macOS, musl)."""
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # tcmalloc / jemalloc: nothing to tune or trim
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (raises AttributeError outside glibc)
    except (OSError, AttributeError):
        return None
    return libc
