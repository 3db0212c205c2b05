"""Packed LoRA trials against one at a time: the same study of 8 LoRA trials, side by side in one run.

    python bench/packing.py                                   # CPU: tiny and GPT-2 small widths, packs of 4 and 8
    python bench/packing.py --device cuda                     # GPU: GPT-2 small and medium widths in bf16
    python bench/packing.py --size tiny --trials 2 --steps 2 --packs 2   # the CI smoke run
    python bench/packing.py --json bench.jsonl                # also append the results as JSON lines

The study: `--trials` LoRA trials on the shared SMS sample (task.max_length=128, batch 8, adapter dropout 0,
random weights of the preset's shape, as bench/train_step.py), ranks 2/4/8/16 and two learning rates in turn,
`--steps` optimizer steps each, one capped evaluation at the end. Each mode runs in a fresh process: `alone` is
`tasks.train.trial.run_trial` for each trial in turn (Hydra's basic launcher runs a sweep's trials so), `pack K` is
`tasks.train.pack.run_pack` with K places (the next trial joins when one leaves), as a sweep with
`hydra.sweeper.pack.size=K` runs them.

Columns: wall time of the whole study (setup, training, evaluation) and the process's CPU time (user + system, all
threads: the work done, steadier than wall time on a machine shared with other work); study tokens/s = all trials'
training tokens / that wall time (tok/CPU-s: / the CPU time); train tokens/s = the same tokens / the summed step
time (evaluation and setup out); per-trial tokens/s = the median over trials of each trial's own steady-state
`tokens_per_s` (a packed trial's is its tokens over its share of the packed steps: tasks/train/pack/record.py); peak
memory: the largest trial's own peak (alone) or the pack's (RSS reset at its start on the CPU, CUDA's max allocated
on a GPU); speed-up = study tokens/s against `alone`; same = every trial's training losses and final validation loss
equal its `alone` run's (relative 1e-3: float rounding; bf16 is looser). With `--reps N` the modes alternate N times
and the table shows medians.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

RANKS, LRS = (2, 4, 8, 16), (3e-4, 1e-3)
SAME_RTOL = {"fp32": 1e-3, "bf16": 3e-2}


def study_overrides(args: Any, size: str, root: str) -> tuple[list[str], list[list[str]]]:
    """The fixed overrides of the study, and each trial's own."""
    shared = C.shared_dir() / "data" / "sms_spam" / "SMSSpamCollection"
    common = [
        f"model={size}", "model.pretrained=false", "task=sms_spam", f"task.path={shared}", "task.max_length=128",
        "task.val_size=0.05", "task.test_size=0.02", f"trainer.max_steps={args.steps}", "trainer.batch_size=8",
        "trainer.eval_every=null", "trainer.max_eval_batches=2", "trainer.save_checkpoint=false", "lora.dropout=0",
        "trainer.reuse=off", f"trainer.device={args.device}", f"trainer.precision={precision(args)}",
        f"trainer.num_threads={args.threads}", f"paths.root_dir={root}",
    ]  # fmt: skip
    trials = [[f"lora.rank={RANKS[i % 4]}", f"optim.lr={LRS[(i // 4) % 2]}"] for i in range(args.trials)]
    return common, trials


def precision(args: Any) -> str:
    return "bf16" if args.device == "cuda" else "fp32"


# ------------------------------------------------------------------------------------------------ the worker


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import tasks.config  # noqa: F401  (the schemas and resolvers conf/ needs)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(C.ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One mode of one study in this fresh process: each trial's record, the wall time, the peak memory."""
    C.offline_env()
    from tasks.train.pack import ListSource, MemberSpec, run_pack
    from tasks.train.trial import run_trial

    cfgs = [compose([*spec["common"], *own]) for own in spec["trials"]]
    out = Path(spec["root"]) / spec["mode"]
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if spec["pack"] == 1:
        results = [run_trial(cfg, run_dir=out / str(i)) for i, cfg in enumerate(cfgs)]
    else:
        source = ListSource(MemberSpec(str(i), cfg, None, out / str(i)) for i, cfg in enumerate(cfgs))
        run_pack(cfgs[0], source, size=spec["pack"])
        results = [source.outcomes[str(i)].result for i in range(len(cfgs))]
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    # each trial's (alone) or the pack's own measured peak (RSS, or CUDA's max allocated), reset when it starts
    peak = max(r.get("pack_peak_memory_mb", r["peak_memory_mb"]) for r in results)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_mb": peak,
        "trials": [
            {
                "tokens": r["train_tokens"],
                "train_time_s": r["train_time_s"],
                "tokens_per_s": r["tokens_per_s"],
                "losses": [p["loss"] for p in r["train_curve"]],
                "val_loss": r["metrics"]["val_loss"],
            }
            for r in results
        ],
        "device_name": results[0]["device_name"],
    }


def _cpu_seconds() -> float:
    """CPU time of this process (user + system, all threads): the work done, whatever else shares the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------------- the main


def figures(res: dict[str, Any]) -> dict[str, Any]:
    """One run's study-level figures (module docstring)."""
    tokens = sum(t["tokens"] for t in res["trials"])
    per_trial = [t["tokens_per_s"] for t in res["trials"] if t["tokens_per_s"]]
    return {
        "wall_s": res["wall_s"],
        "cpu_s": res["cpu_s"],
        "study_tokens_per_s": tokens / res["wall_s"],
        "study_tokens_per_cpu_s": tokens / res["cpu_s"],
        "train_tokens_per_s": tokens / sum(t["train_time_s"] for t in res["trials"]),
        "trial_tokens_per_s": C.median(per_trial) if per_trial else None,
        "peak_mb": res["peak_mb"],
    }


def summarise(size: str, label: str, runs: list[dict[str, Any]], alone: list[dict[str, Any]], rtol: float) -> dict:
    """The median of each figure over the repetitions, and whether every trial's result equals its `alone` run."""
    each = [figures(r) for r in runs]
    row: dict[str, Any] = {"size": size, "mode": label, "reps": len(runs)}
    for name in each[0]:
        values = [e[name] for e in each if e[name] is not None]
        row[name] = C.median(values) if values else None
    row["same_results"] = None
    if runs is not alone:
        row["same_results"] = all(
            _close([*a["losses"], a["val_loss"]], [*b["losses"], b["val_loss"]], rtol)
            for run in runs
            for a, b in zip(run["trials"], alone[0]["trials"], strict=True)
        )
    return row


def _close(a: list[float], b: list[float], rtol: float) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= rtol * max(abs(y), 1e-6) for x, y in zip(a, b, strict=True))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", nargs="+", help="model presets (default: tiny small on CPU, small medium on CUDA)")
    parser.add_argument("--packs", nargs="+", type=int, default=[4, 8], help="pack sizes to run beside `alone`")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, help="optimizer steps per trial (default: 30 tiny, 8 larger on CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=1, help="repetitions of each mode, alternating (medians shown)")
    parser.add_argument("--json", help="append results as JSON lines to this file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    C.offline_env()
    sizes = args.size or (["small", "medium"] if args.device == "cuda" else ["tiny", "small"])
    info = C.machine(args.threads)
    print(f"# {info}")
    rows, records = [], []
    for size in sizes:
        steps = args.steps or (30 if size == "tiny" or args.device == "cuda" else 8)
        run = argparse.Namespace(**{**vars(args), "steps": steps})
        with tempfile.TemporaryDirectory(prefix="lorasweep-pack-bench-") as root:
            common, trials = study_overrides(run, size, root)
            modes = [1, *args.packs]
            runs: dict[int, list[dict[str, Any]]] = {pack: [] for pack in modes}
            for rep in range(args.reps):  # modes alternate, so the machine's load falls on each alike
                for pack in modes:
                    spec = {"common": common, "trials": trials, "pack": pack, "mode": f"{pack}-{rep}",
                            "root": root, "device": args.device}  # fmt: skip
                    runs[pack].append(C.run_worker(__file__, spec))
                    print(f"# {size} pack={pack} rep {rep}: {runs[pack][-1]['wall_s']:.1f} s", file=sys.stderr)
        for pack in modes:
            row = summarise(
                size, "alone" if pack == 1 else f"pack {pack}", runs[pack], runs[1], SAME_RTOL[precision(args)]
            )
            row["speedup"] = row["study_tokens_per_s"] / rows_alone(rows, row)
            rows.append(row)
            records.append({"bench": "packing", **row, "steps": steps, "trials": args.trials,
                            "device_name": runs[pack][0]["device_name"], "machine": info})  # fmt: skip
    shown = [_formatted(r) for r in rows]
    C.finish(shown, records, args, "each mode a fresh process, one after another")


def rows_alone(rows: list[dict[str, Any]], row: dict[str, Any]) -> float:
    """The study tokens/s of `alone` for the row's model size (the row itself when it is `alone`)."""
    if row["mode"] == "alone":
        return row["study_tokens_per_s"]
    return next(r["study_tokens_per_s"] for r in rows if r["size"] == row["size"] and r["mode"] == "alone")


def _formatted(r: dict[str, Any]) -> dict[str, str]:
    number = lambda v, fmt: format(v, fmt) if v is not None else "-"
    return {
        "size": r["size"],
        "mode": r["mode"],
        "wall s": number(r["wall_s"], ".1f"),
        "CPU s": number(r["cpu_s"], ".1f"),
        "study tok/s": number(r["study_tokens_per_s"], ".0f"),
        "tok/CPU-s": number(r["study_tokens_per_cpu_s"], ".0f"),
        "train tok/s": number(r["train_tokens_per_s"], ".0f"),
        "per-trial tok/s": number(r["trial_tokens_per_s"], ".0f"),
        "peak MB": number(r["peak_mb"], ".0f"),
        "speed-up": number(r["speedup"], ".2f") + "x",
        "same": "-" if r["same_results"] is None else ("yes" if r["same_results"] else "NO"),
    }


if __name__ == "__main__":
    C.main_or_worker(sys.argv, worker, main)
