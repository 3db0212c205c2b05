"""`python sweep.py -m ...` on the tiny model and the SMS sample: the sweeper with the real trainer."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from helpers import run_sweep_py
from optuna.trial import TrialState

from sweeper import user_attrs_from_metrics

pytestmark = pytest.mark.slow

# ARCHITECTURE.md: the names the analysis reads from each trial's user attributes
ATTRS = {
    "objective_name", "val_loss", "val_accuracy", "val_macro_f1", "test_accuracy", "best_step",
    "task", "model", "finetune", "lora_rank", "lora_alpha", "freeze_blocks", "optimizer", "lr", "schedule",
    "warmup_ratio", "batch_size", "grad_accum", "epochs", "max_steps",
    "trainable_params", "total_params", "trainable_pct", "peak_memory_mb", "wall_time_s", "train_time_s",
    "tokens_per_s", "device", "precision", "seed", "run_dir", "code_version", "stopped_early",
}  # fmt: skip


def sweep_args(shared_data: Path, tmp_path: Path) -> list[str]:
    return [
        "-m", "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "task.max_length=48", "task.val_size=0.05", "task.test_size=0.05", "trainer.max_steps=8",
        "trainer.eval_every=4", "trainer.batch_size=16", "trainer.max_eval_batches=4", "trainer.save_checkpoint=false",
        "hydra/sweeper/sampler=grid", f"paths.root_dir={tmp_path}", f"hydra.sweeper.storage=sqlite:///{tmp_path}/s.db",
    ]  # fmt: skip


def test_grid_over_lora_rank_gives_two_complete_trials_with_params_and_all_user_attributes(shared_data, tmp_path):
    proc = run_sweep_py(*sweep_args(shared_data, tmp_path), "lora.rank=2,4")
    study = optuna.load_study(study_name="sms_spam-tiny-lora", storage=f"sqlite:///{tmp_path}/s.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["lora.rank"] for t in study.trials) == [2, 4]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] and study.metric_names == ["accuracy"]
    for trial in study.trials:
        assert set(trial.user_attrs) >= ATTRS, sorted(ATTRS - set(trial.user_attrs))
        metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert user_attrs_from_metrics(metrics).items() <= trial.user_attrs.items()
        assert trial.user_attrs["lora_rank"] == trial.params["lora.rank"]
        assert trial.value == metrics["objective"]["value"] == trial.user_attrs["val_accuracy"]
        assert sorted(trial.intermediate_values) == [0, 4, 8], "the untouched model (step 0) and each evaluation"
    sweep_dir = tmp_path / "outputs" / "sweeps" / "sms_spam-tiny-lora"
    assert (sweep_dir / "optimization_results.yaml").exists()
    assert {p.name for p in sweep_dir.glob("trial_*")} == {"trial_0", "trial_1"}
    assert "optuna-dashboard sqlite:///" in proc.stdout


def test_a_diverging_trial_fails_with_its_reason_and_the_other_completes(shared_data, tmp_path):
    run_sweep_py(
        *sweep_args(shared_data, tmp_path), "finetune=full", "optim.lr=1e-3,1e6", "trainer.grad_clip=null",
    )  # fmt: skip
    study = optuna.load_study(study_name="sms_spam-tiny-full", storage=f"sqlite:///{tmp_path}/s.db")
    by_lr = {t.params["optim.lr"]: t for t in study.trials}
    assert by_lr[1e-3].state == TrialState.COMPLETE
    assert by_lr[1e6].state == TrialState.FAIL
    assert by_lr[1e6].user_attrs["fail_reason"].startswith("NonFiniteLossError")
