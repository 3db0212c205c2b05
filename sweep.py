"""lorasweep's entry point: one trial, or an Optuna study of them with `-m`.

    python sweep.py                                         # one trial: GPT-2 small, LoRA, SMS spam
    python sweep.py model=tiny task=sms_spam trainer.max_steps=50
    python sweep.py -m lora.rank=4,8,16 model=medium        # an Optuna study over the ranks
    python sweep.py -m hparams_search=lora_vs_full          # a prepared search space
    python sweep.py --help                                  # config groups and their options

Each trial writes `metrics.json` into its run folder; a sweep also records every trial in the study database
(`sweeps.db` by default), which `optuna-dashboard` and `python -m analysis.report` read.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sweeper import current_pack, isolated_job, set_config_check, set_inactive_keys, set_pack_key
from tasks.config.checks import check_config
from tasks.config.cli import run_hydra_app
from tasks.judge import JudgeUnavailableError
from tasks.train.errors import NonFiniteLossError, TrialOutOfMemoryError
from tasks.train.pack import alone_reason, pack_key
from tasks.train.reuse import inactive_nodes
from tasks.train.trial import run_trial

log = logging.getLogger("lorasweep")

# problems with the user's config, data or settings: one line, no traceback, when running a single trial
USER_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    NonFiniteLossError,
    TrialOutOfMemoryError,
    JudgeUnavailableError,
)


def check_trial_config(cfg: DictConfig) -> None:
    """The sweeper calls this with the composed config of every swept value before the first trial, so
    `lora.rank=4,0` is refused before rank 4 trains. Raises ValueError (one line)."""
    check_config(cfg)


set_config_check(check_trial_config)
set_pack_key(pack_key, alone_reason)  # hydra.sweeper.pack.size > 1: LoRA trials that can share a base train together
set_inactive_keys(inactive_nodes)  # confirmation groups: lora.rank does not split full fine-tuning trials


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...] | dict[str, str]:
    """Run one trial and return its objective (a tuple for multi-objective studies) to the sweeper; a pack's job
    returns each member's state (the sweeper reads their results from the study)."""
    # a launcher's worker process may run the next trial: nothing of this one (memory, torch threads) outlives it
    with isolated_job():
        pack = current_pack()
        if pack is not None:  # several trials in this job; each is told to the study by the sweeper
            from tasks.train.pack.sweep import run_sweep_pack

            return run_sweep_pack(cfg, pack, Path(HydraConfig.get().runtime.output_dir))
        try:
            metrics = run_trial(cfg)
        except USER_ERRORS as exc:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise  # the sweeper records the trial as failed, with this reason
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            sys.exit(f"error: {message}")
    value = metrics["objective"]["value"]
    return tuple(value) if isinstance(value, list) else value


if __name__ == "__main__":
    run_hydra_app(main)  # a command line that does not compose: one line naming each bad key or option
