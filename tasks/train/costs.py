"""Costs a report can trust: throughput from steady-state steps with its spread, and how busy the machine was.

A trial's first steps pay for allocator growth, kernel selection and cold caches, and a shared machine slows single
steps at random; an average over every step mixes both into one number. So the figures come from the steady-state
steps only, as a median with the 10th and 90th percentiles around it. Evaluation never counts: the loop times each
optimizer step alone. ARCHITECTURE.md and docs/metrics.md name the fields.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

WARMUP_MIN_STEPS = 2
WARMUP_FRACTION = 0.10


def warmup_steps(n_steps: int) -> int:
    """How many first steps are left out: max(2, ceil(10% of the steps run))."""
    return max(WARMUP_MIN_STEPS, math.ceil(WARMUP_FRACTION * n_steps))


def steady_state(step_times: Sequence[float], step_tokens: Sequence[int]) -> dict[str, Any]:
    """Per-step throughput and step time after warm-up: median, p10, p90 (None when no step is left).

    `tokens_per_s` is the median of the steps' own tokens/s; `tokens_per_s_overall` is all tokens over all training
    time (warm-up included), the figure earlier versions called `tokens_per_s`.
    """
    times = np.asarray(step_times, dtype=float)
    tokens = np.asarray(step_tokens, dtype=float)
    skip = warmup_steps(len(times))
    steady_times, steady_tokens = times[skip:], tokens[skip:]
    out: dict[str, Any] = {
        "tokens_per_s_overall": float(tokens.sum() / times.sum()) if times.sum() > 0 else None,
        "warmup_steps_excluded": min(skip, len(times)),
        "steady_steps": len(steady_times),
    }
    rates = steady_tokens / steady_times if len(steady_times) and (steady_times > 0).all() else np.array([])
    for name, values in (("tokens_per_s", rates), ("step_time_s", steady_times)):
        if len(values):
            p10, median, p90 = np.percentile(values, [10, 50, 90])
            out.update({name: float(median), f"{name}_p10": float(p10), f"{name}_p90": float(p90)})
            out[f"{name}_spread"] = float((p90 - p10) / median) if median > 0 else None
        else:
            out.update({name: None, f"{name}_p10": None, f"{name}_p90": None, f"{name}_spread": None})
    return out


def machine_load(when: str) -> dict[str, Any]:
    """The system load averages (1 and 5 minutes) now, as `load_1m_<when>` and `load_5m_<when>`."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:  # not available on this platform
        one = five = None
    return {f"load_1m_{when}": one, f"load_5m_{when}": five}


def machine(device: torch.device) -> dict[str, Any]:
    """What the trial ran on: CPU count, the CPU model, and the GPU's name on CUDA."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model()}
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu_model"]
    return info


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
