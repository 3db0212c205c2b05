"""A Hydra callback for tests: what of the previous jobs is still alive when a job starts (no mocks involved).

Every torch module that runs a forward pass is remembered through a weak reference (torch's global forward hook),
so the probe holds nothing alive itself. At each job start it appends one JSON line to `out`: the job number, how
many remembered modules are still alive, torch's thread count and the resident memory (MB).

    python sweep.py -m ... '+hydra.callbacks.probe={_target_:leak_probe.LeakProbe,out:/tmp/probe.jsonl}'
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def _rss_mb() -> float | None:
    """The process's resident memory now (Linux), for the record."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    line = next(ln for ln in status.read_text().splitlines() if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


class LeakProbe(Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.modules: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self.threads_at_start = torch.get_num_threads()
        torch.nn.modules.module.register_module_forward_hook(self._seen)

    def _seen(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.modules.add(module)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        record = {
            "job": int(config.hydra.job.num),
            "alive": len(self.modules),
            "threads": torch.get_num_threads(),
            "rss_mb": _rss_mb(),
        }
        with self.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
