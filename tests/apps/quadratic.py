"""A toy Hydra app that keeps sweep.py's contract, for the sweeper tests (seconds instead of minutes).

The loss falls with each step towards (x - 1)^2 + y, is reported at every step through
`sweeper.current_trial()`, and the job returns it (or (loss, model.size) when `objective` is a list).

    python tests/apps/quadratic.py -m 'x=interval(-2,2)' y=0,1 hydra.sweeper.n_trials=6
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweeper import current_trial, set_inactive_keys


def _lose_the_database_once(spec: str) -> None:
    """`TOY_LOSE_DB=<SQL statement prefix>:<n>`: once this process has committed its n-th new trial, the next
    statement of that thread starting with that prefix fails as a lost connection, once. The sweeper runs in this
    process (Hydra's basic launcher), so this is the database going away after an ask created its trial and before
    it was handed out.
    """
    import threading

    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.exc import OperationalError

    prefix, n = spec.rsplit(":", 1)
    state: dict[str, Any] = {"created": 0, "armed": None, "done": False}  # armed: the thread whose statement fails

    def before_cursor_execute(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.startswith("INSERT INTO trials "):
            state["created"] += 1
        elif state["armed"] == threading.get_ident() and statement.startswith(prefix):
            state["armed"] = None
            raise OperationalError(statement, params, Exception("server closed the connection unexpectedly"))

    def commit(conn: Any) -> None:
        if state["created"] == int(n) and not state["done"]:
            state["armed"], state["done"] = threading.get_ident(), True

    event.listen(Engine, "before_cursor_execute", before_cursor_execute)
    event.listen(Engine, "commit", commit)


if os.environ.get("TOY_LOSE_DB"):
    _lose_the_database_once(os.environ["TOY_LOSE_DB"])

# as sweep.py: LoRA's settings do not apply to full fine-tuning (confirmation groups ignore lora.rank there)
set_inactive_keys(lambda cfg: [] if cfg.finetune.mode == "lora" else ["lora"])


class NonFiniteLossError(FloatingPointError):
    """Raised like the trainer's (tasks.train.errors): a NaN/inf loss ends the trial as FAIL."""


def suggest_y(cfg: DictConfig, trial: optuna.Trial) -> None:
    """A custom_search_space: y only matters (and is searched) when x is positive."""
    if trial.params["x"] > 0:
        trial.suggest_int("y", 0, 3)


def _torch_module(cfg: DictConfig) -> Any:
    """A small torch model for the isolation tests (`torch_module=true`), and the thread count a job may set.
    torch is imported only then: the other toy sweeps start faster without it."""
    if not cfg.torch_module and cfg.threads is None:
        return None
    import torch

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    return torch.nn.Linear(64, 64) if cfg.torch_module else None


def _seed_noise(cfg: DictConfig) -> float:
    """What a seed changes: up to `seed_noise` added to the loss, the same for the same seed."""
    return cfg.seed_noise * ((cfg.trainer.seed * 2654435761) % 1000) / 1000


@hydra.main(version_base="1.3", config_path="conf", config_name="quadratic")
def main(cfg: DictConfig) -> float | tuple[float, float]:
    trial = current_trial() if cfg.report else None
    module = _torch_module(cfg)
    if cfg.kill_above is not None and cfg.x > cfg.kill_above:
        os.kill(os.getpid(), signal.SIGKILL)  # a worker killed mid-trial (only under a process launcher)
    curve = []
    loss = math.inf
    run_dir = HydraConfig.get().runtime.output_dir
    Path(run_dir, "running").touch()  # for a test that interrupts a running trial (no database read needed)
    for step in range(1, cfg.steps + 1):
        loss = (cfg.x - 1.0) ** 2 + cfg.y + cfg.model.offset + 1.0 / step + _seed_noise(cfg)
        if module is not None:
            module(module.weight.new_ones(1, module.in_features))  # the "model" a trial holds while it runs
        if cfg.nan_above is not None and cfg.x > cfg.nan_above:
            loss = float("nan")
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss} at step {step}")
        curve.append({"step": step, "val_loss": loss})
        if trial is not None:
            trial.report(loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        slow = trial is not None and trial.number == cfg.slow_trial
        time.sleep(cfg.slow_s / cfg.steps if slow else cfg.sleep_s)
    multi = not isinstance(cfg.objective, str)
    metrics = {
        "objective": {"name": list(cfg.objective) if multi else cfg.objective, "key": "val_loss", "value": loss},
        "metrics": {"val_loss": loss, "best_step": cfg.steps},
        "summary": {
            "model": cfg.model.name,
            "x": cfg.x,
            "y": cfg.y,
            "finetune": cfg.finetune.mode,
            "seed": cfg.trainer.seed,
            "phase": cfg.trainer.phase,
            "confirms": cfg.trainer.confirms,
        },
        "trainable_params": cfg.model.size,
        "run_dir": run_dir,
        "device": "cpu",
        "val_curve": curve,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    Path(run_dir, "metrics.json").write_text(json.dumps(metrics, indent=1))
    if trial is not None:
        trial.set_metrics(metrics)
    return (loss, float(cfg.model.size)) if multi else loss


if __name__ == "__main__":
    main()
