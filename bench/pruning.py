"""Pruning: what the median pruner saves on a real study, and whether it still finds as good a trial.

    python bench/pruning.py                              # 12-trial studies, 3 sampler seeds, pruned vs not
    python bench/pruning.py --trials 16 --seeds 0 1 2 3
    python bench/pruning.py --trials 2 --seeds 0 --max-steps 4 --eval-every 2   # the CI smoke run
    python bench/pruning.py --json bench.jsonl

Each study is a real `python sweep.py -m` run (our sweeper, TPE sampler, SQLite study) of the tiny GPT-2 on the
local SMS spam sample, full fine-tuning, searching the learning rate (log-uniform) and the batch size, objective
the validation loss, evaluated every `--eval-every` steps (the pruner's checkpoints). For each sampler seed the same
study runs twice, with `hydra/sweeper/pruner=median` and with `none`. Reported: training steps spent (each trial's
metrics.json `steps`, pruned trials included) and the best value; targets: pruned steps <= 60% of unpruned, and the
pruned best within the spread (min..max over seeds) of the unpruned bests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C


def run_study(tmp: Path, name: str, seed: int, pruner: str, args: argparse.Namespace) -> dict[str, Any]:
    """One `sweep.py -m` study; returns its steps, best value, states and wall time."""
    import optuna

    storage = f"sqlite:///{tmp / 'pruning.db'}"
    sms = C.shared_dir() / "data" / "sms_spam" / "SMSSpamCollection"
    cmd = [
        sys.executable,
        str(C.ROOT / "sweep.py"),
        "-m",
        f"paths.root_dir={tmp}",
        "model=tiny",
        "task=sms_spam",
        f"task.path={sms}",
        "task.max_length=64",
        "task.val_size=0.1",
        "finetune=full",
        "objective=loss",
        f"trainer.max_steps={args.max_steps}",
        f"trainer.eval_every={args.eval_every}",
        "trainer.save_checkpoint=false",
        "trainer.device=cpu",
        f"trainer.num_threads={args.threads}",
        "optim.lr=tag(log, interval(1e-5, 3e-2))",
        "trainer.batch_size=8,16,32",
        "hydra/sweeper/sampler=tpe",
        f"hydra.sweeper.sampler.seed={seed}",
        f"hydra/sweeper/pruner={pruner}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={name}",
    ]
    if pruner == "median":
        cmd += [
            f"hydra.sweeper.pruner.n_startup_trials={args.startup}",
            f"hydra.sweeper.pruner.n_warmup_steps={args.warmup_steps}",
        ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"sweep {name} failed:\n{proc.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state.name for t in study.trials]
    steps = sum(int(t.user_attrs.get("steps") or 0) for t in study.trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "study": name,
        "seed": seed,
        "pruner": pruner,
        "trials": len(study.trials),
        "pruned": states.count("PRUNED"),
        "complete": len(done),
        "steps": steps,
        "best": min(t.value for t in done) if done else None,
        "wall_s": wall,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--startup", type=int, default=3, help="median pruner: trials finished before pruning")
    parser.add_argument("--warmup-steps", type=int, default=20, help="median pruner: steps before a trial can stop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="append results as JSON lines to this file")
    return parser.parse_args()


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Steps spent with the pruner as a share of those without, and whether its bests fall in the unpruned spread."""
    unpruned = [r for r in results if r["pruner"] == "none"]
    pruned = [r for r in results if r["pruner"] == "median"]
    share = sum(r["steps"] for r in pruned) / max(1, sum(r["steps"] for r in unpruned))
    bests = [r["best"] for r in unpruned if r["best"] is not None]
    pruned_bests = [r["best"] for r in pruned if r["best"] is not None]
    lo, hi = min(bests), max(bests)
    within = all(b <= hi for b in pruned_bests)  # minimising: no worse than the worst unpruned best
    print(
        f"# median pruner: {share:.0%} of the unpruned training steps (target <= 60%); pruned bests "
        f"{[round(b, 4) for b in pruned_bests]} vs unpruned spread {lo:.4f}..{hi:.4f}: "
        f"{'within' if within else 'OUTSIDE'}; load {C.machine(1)['load_avg']}"
    )
    return {
        "steps_share": share,
        "unpruned_best_spread": [lo, hi],
        "pruned_bests": pruned_bests,
        "pruned_best_within_spread": within,
    }


def main() -> None:
    args = parse_args()
    C.offline_env()
    info = C.machine(args.threads)
    versions = f"torch {info['torch']}, optuna {info.get('optuna')}"
    print(f"# {info['cpu']}, {info['cores']} cores, {versions}, load {info['load_avg']}")
    tmp = Path(tempfile.mkdtemp(prefix="lorasweep-bench-"))
    results = []
    for seed in args.seeds:  # alternate, so load drifts hit both
        for pruner in ("none", "median"):
            results.append(run_study(tmp, f"{pruner}-{seed}", seed, pruner, args))
            print(f"  seed {seed} {pruner}: {results[-1]['steps']} steps", file=sys.stderr, flush=True)
    rows = [
        {
            "seed": r["seed"],
            "pruner": r["pruner"],
            "trials": r["trials"],
            "pruned": r["pruned"],
            "train steps": r["steps"],
            "best val loss": f"{r['best']:.4f}" if r["best"] is not None else "-",
            "wall s": f"{r['wall_s']:.0f}",
        }
        for r in results
    ]
    print(C.table(rows, list(rows[0])))
    summary = verdict(results)
    record = {"bench": "pruning", "studies": results, **summary, "settings": vars(args), "machine": info}
    C.append_json(args.json, [{**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}])


if __name__ == "__main__":
    main()
