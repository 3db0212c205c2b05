"""What the bench scripts share: the machine's description, the matmul peak, worker processes, tables, JSON lines.

Every comparison runs each side in its own fresh process (`run_worker`), alternating ours and the peer, so load on
the machine falls on both sides alike and each side's peak RSS is its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))


def shared_dir() -> Path:
    """The shared samples folder (`../shared` beside the checkout, or `$LORASWEEP_SHARED_DIR`)."""
    return Path(os.environ.get("LORASWEEP_SHARED_DIR", ROOT.parent / "shared")).expanduser()


def offline_env() -> None:
    """No hub access, and GPT-2's BPE from the shared folder when no other is configured."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would interleave with the tables
    bpe = shared_dir() / "tokenizer" / "gpt2.tiktoken"
    if "LORASWEEP_TIKTOKEN_FILE" not in os.environ and bpe.is_file():
        os.environ["LORASWEEP_TIKTOKEN_FILE"] = str(bpe)


def quiet_peer() -> None:
    """transformers/peft warnings (e.g. about `loss_type`) would drown the tables."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def machine(threads: int) -> dict[str, Any]:
    """CPU model, cores, RAM, library versions, threads, allocator settings and the load when measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        ram_gb = round(int(meminfo.read_text().split()[1]) / 2**20, 1)
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("transformers", "peft", "optuna"):
        with contextlib.suppress(ImportError):
            versions[name] = __import__(name).__version__
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": ram_gb,
        "threads": threads,
        "allocator": allocator_description(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        **versions,
    }


def allocator_description() -> str:
    """Which allocator the workers get: glibc (default), a preload (tcmalloc/jemalloc), or tuned glibc."""
    preload = os.environ.get("LD_PRELOAD", "")
    tuned = os.environ.get("LORASWEEP_MALLOC", "")
    parts = [Path(p).name for p in preload.split(":") if p] or ["glibc"]
    if tuned:
        parts.append(f"LORASWEEP_MALLOC={tuned}")
    return "+".join(parts)


def matmul_peak(threads: int, n: int = 2048, reps: int = 10) -> float:
    """Median fp32 GFLOP/s of an n x n matmul on `threads` threads: the denominator of MFU here."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB: the trainer's own measure."""
    from tasks.train.runtime import peak_rss_mb as measure

    return measure()


def minor_faults() -> int:
    """Minor page faults so far: each is a page the allocator handed back to the kernel and touched again."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_worker(script: str | Path, spec: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> dict:
    """Run `script --worker SPEC_FILE` in a fresh interpreter and return the JSON object it prints last."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="lorasweep-bench-") as f:
        json.dump(spec, f)
        f.flush()
        proc = subprocess.run(
            [sys.executable, str(script), "--worker", f.name],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            check=False,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        brief = {k: v for k, v in spec.items() if not isinstance(v, list | dict)}
        raise RuntimeError(f"worker {brief} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def worker_spec(argv: Sequence[str]) -> dict | None:
    """The spec when this process is a worker (`--worker SPEC_FILE`), else None."""
    if len(argv) >= 3 and argv[1] == "--worker":
        return json.loads(Path(argv[2]).read_text())
    return None


def main_or_worker(argv: Sequence[str], worker: Callable[[dict], dict], main: Callable[[], None]) -> None:
    """A bench script's entry point: as a worker (`--worker SPEC_FILE`) print its result as JSON, else run `main`."""
    spec = worker_spec(argv)
    if spec is None:
        main()
    else:
        print(json.dumps(worker(spec)))


def finish(rows: Sequence[Mapping[str, Any]], records: list[dict], args: Any, method: str) -> None:
    """Print the table and the load average after the run (with `method`), and append the records to `--json`."""
    print(table(rows, list(rows[0]) if rows else []))
    after = machine(args.threads)["load_avg"]
    print(f"# load average after: {after}; {method}")
    for r in records:
        r["load_avg_after"] = after
    append_json(args.json, records)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table (numbers already formatted as strings by the caller)."""
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    out = [line(columns), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line([r.get(c, "") for c in columns]) for r in rows]
    return "\n".join(out)


def append_json(path: str | Path | None, records: Iterable[Mapping[str, Any]]) -> None:
    """Append one JSON object per line to `path` (nothing when `path` is None)."""
    if not path:
        return
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record, default=str) + "\n")
