"""Trials that run one after another in the sweep process (Hydra's basic launcher) do not see each other:
the real sweep.py and trainer, a model wide enough that a leaked trial shows in the next one's peak memory.

GPT-2 small with random weights and all but the last block frozen: 124M parameters (500 MB) held by every trial,
two optimizer steps each. lr=1e9 makes a trial fail with a NaN loss after its first step, holding its model.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import optuna
import pytest
import torch
from helpers import ROOT, run_sweep_py

from sweeper import isolated_job

PEAK_TOLERANCE = 1.10  # a trial's peak memory may differ by this factor whatever ran before it


def _job_that_fails(threads: int) -> weakref.ref:
    model = torch.nn.Linear(8, 8)
    torch.set_num_threads(threads)
    model(torch.ones(1, 8))
    raise ValueError(weakref.ref(model))


def test_a_job_wrapped_in_isolated_job_leaves_no_model_and_no_thread_count_behind():
    """What sweep.py's job does in a worker process a launcher reuses (no sweeper around it there)."""
    threads = torch.get_num_threads()
    try:
        with isolated_job():
            _job_that_fails(threads + 1)
    except ValueError as e:
        kept = e  # the exception itself survives (the launcher reports it), its frames do not hold the model
    (model_ref,) = kept.args
    assert model_ref() is None
    assert torch.get_num_threads() == threads


@pytest.mark.slow
def test_a_trials_peak_memory_and_model_do_not_depend_on_the_trial_before_it(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests" / "apps"))  # tests/apps/leak_probe.py, a Hydra callback
    out = tmp_path / "probe.jsonl"
    run_sweep_py(
        "-m", "model=small", "model.pretrained=false", "finetune=full", "freeze.blocks=11", "task=sms_spam",
        f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}", "task.max_length=16", "task.val_size=0.01",
        "task.test_size=0.002", "trainer.max_steps=2", "trainer.batch_size=2", "trainer.eval_batch_size=16",
        "trainer.max_eval_batches=1", "trainer.save_checkpoint=false", "trainer.grad_clip=null",
        # grid order for seed 1: 3e-4 (COMPLETE), 1e9 (FAIL), 1e-4 (COMPLETE after FAIL), 2e-4 (COMPLETE after COMPLETE)
        "optim.lr=1e-4,2e-4,1e9,3e-4", "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=1",
        f"paths.root_dir={tmp_path}", f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}",
        f"+hydra.callbacks.probe={{_target_:leak_probe.LeakProbe,out:'{out}'}}",
        cwd=tmp_path,
    )  # fmt: skip
    study = optuna.load_study(study_name="sms_spam-small-full", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert [(t.params["optim.lr"], t.state.name) for t in study.trials] == [
        (3e-4, "COMPLETE"),
        (1e9, "FAIL"),
        (1e-4, "COMPLETE"),
        (2e-4, "COMPLETE"),
    ]
    starts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["alive"] for s in starts] == [0, 0, 0, 0], "a model of an earlier trial was alive when a trial started"
    peaks = {t.number: t.user_attrs["peak_memory_mb"] for t in study.trials if t.state.name == "COMPLETE"}
    first, after_fail, after_complete = peaks[0], peaks[2], peaks[3]
    for name, peak in (("after a FAIL trial", after_fail), ("after a COMPLETE trial", after_complete)):
        assert peak <= first * PEAK_TOLERANCE, f"peak {peak:.0f} MB {name}, {first:.0f} MB as the first trial"
    print(f"peak memory (MB): first {first:.0f}, after FAIL {after_fail:.0f}, after COMPLETE {after_complete:.0f}")
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
            assert metrics["peak_memory_source"] == "peak_rss"
