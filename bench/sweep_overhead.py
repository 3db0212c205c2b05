"""Per-trial fixed cost of a sweep, outside training: what each trial pays before its first step and after its last.

    python bench/sweep_overhead.py                      # GPT-2 small widths (random weights), LoRA, SMS spam, 6 trials
    python bench/sweep_overhead.py --size tiny --trials 3                     # the CI smoke run
    python bench/sweep_overhead.py --storage postgresql+psycopg://u:p@host/db # another study database
    python bench/sweep_overhead.py --json bench.jsonl

Hydra's basic launcher runs a sweep's jobs one after another in the sweeping process, so this runs the trials'
fixed steps in one process, as many times as `--trials`, with the project's own functions:

- compose: `hydra.compose` of conf/ with the trial's overrides (the launcher composes each job's config);
- study: Optuna ask with a 4-parameter TPE search space, 3 intermediate reports + `should_prune`, the trial's
  metrics.json stored as user attributes (`sweeper.TrialHandle.set_metrics`), tell, on a SQLite file by default;
- data: `task.load` (trial 1 tokenizes and fills the token cache; the others read it);
- model: `tasks.train.build.build_model` with `model.pretrained=true` from a local Hugging Face folder (random weights
  of the preset's shape, exported once), LoRA applied, plus the optimizer (trial 1 reads the weights from disk; the
  others copy them from the in-process cache).

The target is the warm trials' total (trial 2 on): <= 2 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

PARAMS = {
    "optim.lr": (1e-5, 3e-3),
    "lora.rank": [4, 8, 16, 32],
    "lora.alpha": [8, 16, 32],
    "trainer.batch_size": [8, 16],
}


class Clock:
    """Named lap times of one trial."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._t
        self._t = now


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(C.ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.num = 0
        cfg.hydra.runtime.output_dir = cfg.paths.output_dir
    HydraConfig.instance().set_config(cfg)
    return cfg


def sample_metrics(base: list[str], run_dir: Path) -> dict[str, Any]:
    """A real metrics.json (tiny model, 2 steps): what set_metrics stores for every trial."""
    from tasks.train.trial import run_trial

    cfg = compose([*base, "model=tiny", "trainer.max_steps=2", "trainer.save_checkpoint=false"])
    return run_trial(cfg, run_dir=run_dir)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--finetune", default="lora", choices=["lora", "full"])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--storage", help="study database URL (default: a fresh SQLite file)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="append results as JSON lines to this file")
    return parser.parse_args()


def one_trial(study: Any, base: list[str], metrics: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """A trial's fixed steps, timed: ask, compose, load the data, build the model, report and tell."""
    from sweeper import TrialHandle
    from tasks import get_task
    from tasks.train.build import build_model
    from tasks.train.optim import build_optimizer
    from tasks.train.runtime import resolve_runtime

    runtime = resolve_runtime("cpu", "fp32")
    clock = Clock()
    trial = study.ask()
    overrides = [
        f"optim.lr={trial.suggest_float('optim.lr', *PARAMS['optim.lr'], log=True)}",
        f"lora.rank={trial.suggest_categorical('lora.rank', PARAMS['lora.rank'])}",
        f"lora.alpha={trial.suggest_categorical('lora.alpha', PARAMS['lora.alpha'])}",
        f"trainer.batch_size={trial.suggest_categorical('trainer.batch_size', PARAMS['trainer.batch_size'])}",
    ]
    clock.lap("study")
    cfg = compose([*base, f"finetune={args.finetune}", *overrides])
    clock.lap("compose")
    task = get_task(cfg.task)
    data = task.load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir)
    clock.lap("data")
    model = build_model(cfg, task.num_classes, runtime)
    build_optimizer(model, cfg.optim, runtime.device)
    clock.lap("model")
    handle = TrialHandle(trial)
    for step in (20, 40, 60):  # the evaluations of a trial, as fit reports them
        handle.report(0.5 + step / 1000, step)
        handle.should_prune()
    handle.set_metrics(metrics)
    study.tell(trial, float(metrics["objective"]["value"]))
    clock.lap("study")
    del model, data
    return {**clock.laps, "total": sum(clock.laps.values())}


def report(laps: list[dict[str, float]]) -> dict[str, float]:
    """The per-trial table, the warm trials' medians and the verdict against the target; returns the medians."""
    columns = ("compose", "study", "data", "model")
    rows: list[dict[str, Any]] = [
        {"trial": i + 1, **{k: f"{lap[k]:.3f}" for k in columns}, "total s": f"{lap['total']:.3f}"}
        for i, lap in enumerate(laps)
    ]
    warm = laps[1:] or laps
    med = {k: C.median(lap[k] for lap in warm) for k in warm[0]}
    rows.append({"trial": "median 2..", **{k: f"{med[k]:.3f}" for k in columns}, "total s": f"{med['total']:.3f}"})
    print(C.table(rows, list(rows[0])))
    verdict = "meets" if med["total"] <= 2.0 else "misses"
    print(
        f"# warm trials' fixed cost {med['total']:.2f} s: {verdict} the <= 2 s target; load {C.machine(1)['load_avg']}"
    )
    return med


def main() -> None:
    args = parse_args()
    C.offline_env()
    import logging

    import optuna
    import torch

    import tasks.config  # noqa: F401  (the schemas and resolvers conf/ needs)
    from model import GPT, GPTConfig
    from model.checkpoint import export_hf

    logging.getLogger("optuna").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lorasweep-bench-"))
    info = C.machine(args.threads)
    versions = f"torch {info['torch']}, optuna {info.get('optuna')}"
    print(f"# {info['cpu']}, {info['cores']} cores, {versions}, load {info['load_avg']}")
    folder = export_hf(GPT(GPTConfig.from_preset(args.size)), tmp / "weights")  # a "hub" model on local disk
    sms = C.shared_dir() / "data" / "sms_spam" / "SMSSpamCollection"
    base = [f"paths.root_dir={tmp}", "task=sms_spam", f"task.path={sms}", "task.max_length=128", "trainer.device=cpu"]
    metrics = sample_metrics(base, tmp / "sample_run")
    storage = args.storage or f"sqlite:///{tmp / 'sweeps.db'}"
    study = optuna.create_study(
        study_name="overhead",
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
        load_if_exists=True,
    )
    model_args = [f"model={args.size}", "model.pretrained=true", f"model.hub_id={folder}"]
    laps = [one_trial(study, [*base, *model_args], metrics, args) for _ in range(args.trials)]
    med = report(laps)
    record = {"bench": "sweep_overhead", "size": args.size, "finetune": args.finetune, "trials": laps}
    record.update(median_warm=med, storage=storage.split(":")[0], machine=info)
    C.append_json(args.json, [{**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}])


if __name__ == "__main__":
    sys.exit(main())
