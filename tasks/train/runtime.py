"""Where a trial runs: device and precision choice, seeding, peak memory, code version.

Kept apart from the loop so each rule is in one place and testable without training.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import random
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.allocator import release_free_memory

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """The resolved device and precision of a trial."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.precision == "fp32" else _DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes; a no-op in fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def resolve_runtime(device: str, precision: str) -> Runtime:
    """Turn `trainer.device`/`trainer.precision` into a usable pair, or say why the pair cannot run here.

    `auto` picks CUDA, then MPS, then CPU; precision `auto` is bf16 on CUDA that supports it, else fp32.
    fp16 needs CUDA (a GradScaler on CPU makes no sense); bf16 on CPU is allowed (autocast supports it).
    """
    if device not in DEVICES:
        raise ValueError(f"trainer.device must be one of {', '.join(DEVICES)}, but got trainer.device={device!r}")
    if precision not in PRECISIONS:
        raise ValueError(
            f"trainer.precision must be one of {', '.join(PRECISIONS)}, but got trainer.precision={precision!r}"
        )
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda needs a CUDA build of torch and a GPU, but none is available here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("trainer.device=mps needs Apple's Metal backend, but it is not available here")
    if precision == "auto":
        precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device != "cuda":
        raise ValueError(
            f"trainer.precision=fp16 needs a CUDA device, but got trainer.device={device}; use fp32 or bf16"
        )
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("trainer.precision=bf16 is not supported by this GPU; use fp16 or fp32")
    return Runtime(torch.device(device), precision)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a CPU run with the same config repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class PeakMemory:
    """Peak memory of one trial, its own also when earlier trials ran in the same process.

    On a GPU: CUDA's max allocated bytes, reset at the trial's start (`cuda_max_allocated`). On the CPU: the RSS
    high-water mark (`peak_rss`). That mark is the process's, and it can only be reset to the current RSS
    (`/proc/self/clear_refs`); memory an earlier trial freed but the allocator kept (glibc under
    `LORASWEEP_MALLOC=tuned`, or fragments under the default settings) would sit in it and be reported as this
    trial's. So the start first hands glibc's free memory back to the system (`malloc_trim`), then resets the mark.
    Where that cannot be done (no `/proc`, another allocator preloaded), a later trial's figure is an upper bound:
    `own` is False and the source says `process_peak_rss`, so the report can leave it out of comparisons.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.source, self.own = "cuda_max_allocated", True
            self.start_mb = torch.cuda.memory_allocated(device) / 2**20
        else:
            self.own = _reset_cpu_peak()
            self.source = "peak_rss" if self.own else "process_peak_rss"
            self.start_mb = current_rss_mb()

    def megabytes(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_rss_mb()


_cpu_trials_started = 0  # CPU trials measured by this process so far


def _reset_cpu_peak() -> bool:
    """Start a CPU trial's peak: True when the mark from now on is this trial's own (see `PeakMemory`)."""
    global _cpu_trials_started
    first = _cpu_trials_started == 0
    _cpu_trials_started += 1
    returned = release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError:
        return first  # ru_maxrss: the process's peak since it started
    return first or returned


def current_rss_mb() -> float | None:
    """This process's resident set now in MiB (VmRSS), or None where /proc is missing."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident set in MiB: VmHWM on Linux (resettable), else ru_maxrss."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    # ru_maxrss is KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 1024


def _proc_status_mb(field: str) -> float | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


@functools.cache
def code_version() -> str:
    """The code this process runs: the git commit, with `-dirty.<hash of the diff>` when tracked files were changed
    (so two different local edits are two versions), else the installed package version.

    Read once per process: the modules it loaded are what its trials run, whatever the files say later.
    """
    root = Path(__file__).resolve().parents[2]
    commit = _git(root, "describe", "--always", "--dirty", "--abbrev=12")
    if commit:
        if commit.endswith("-dirty"):
            diff = _git(root, "diff", "HEAD", "--no-ext-diff", "--binary", strip=False) or ""
            commit += "." + hashlib.sha256(diff.encode()).hexdigest()[:8]
        return commit
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lorasweep")
    except PackageNotFoundError:
        return "unknown"


def _git(root: Path, *args: str, strip: bool = True) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() if strip else out
