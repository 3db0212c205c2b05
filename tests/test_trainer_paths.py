"""The trainer's paths besides a plain finished run: best weights restored, early stop, pruned, out of memory, fp16.

A high constant learning rate on the tiny random GPT-2 makes validation perplexity best after the first step and
worse after it (deterministic on the CPU), so "the best weights" and "the last weights" differ.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import torch

from tasks.train.errors import TrialOutOfMemoryError
from tasks.train.trial import run_trial


@pytest.fixture
def alpaca_args(shared_data):
    return [
        "model=tiny", "task=alpaca", f"task.path={shared_data / 'alpaca' / 'alpaca_sample.json'}",
        "task.train_size=200", "task.val_size=32", "task.test_size=4", "task.max_length=128",
        "judge.enabled=false", "judge.generation.max_new_tokens=8", "finetune=full", "trainer.device=cpu",
        "optim.lr=0.1", "schedule=constant", "schedule.warmup_ratio=0", "trainer.grad_clip=null",
        "trainer.batch_size=4", "trainer.eval_every=1", "trainer.save_checkpoint=false", "task.val_generate_size=8",
    ]  # fmt: skip


def generations(run: Path) -> list[str]:
    return [json.loads(line)["response"] for line in (run / "val_generations.jsonl").read_text().splitlines()]


def test_test_metrics_and_generations_come_from_the_best_weights(compose_cfg, alpaca_args, tmp_path):
    longer = run_trial(compose_cfg(*alpaca_args, "trainer.max_steps=4"), run_dir=tmp_path / "long")
    best = longer["metrics"]["best_step"]
    curve = {p["step"]: p["val_perplexity"] for p in longer["val_curve"]}
    assert best < longer["steps"] == 4 and curve[4] > curve[best]  # training moved past its best point
    # the same run stopped at its best step ends with exactly the best weights (constant lr, same batches)
    at_best = run_trial(compose_cfg(*alpaca_args, f"trainer.max_steps={best}"), run_dir=tmp_path / "short")
    assert at_best["metrics"]["val_perplexity"] == pytest.approx(curve[best], rel=1e-6)
    assert longer["metrics"]["test_perplexity"] == pytest.approx(at_best["metrics"]["test_perplexity"], rel=1e-6)
    assert longer["metrics"]["val_perplexity"] == pytest.approx(curve[best], rel=1e-6)
    assert generations(tmp_path / "long") == generations(tmp_path / "short")


def test_patience_stops_at_the_first_evaluation_that_many_without_improvement(compose_cfg, alpaca_args, tmp_path):
    result = run_trial(compose_cfg(*alpaca_args, "trainer.max_steps=8", "trainer.patience=2"), run_dir=tmp_path)
    values = [p["val_perplexity"] for p in result["val_curve"]]
    best_index = values.index(min(values))
    assert result["stopped_early"] is True
    assert len(values) == best_index + 1 + 2 and result["steps"] == result["val_curve"][-1]["step"] < 8
    assert result["metrics"]["best_step"] == result["val_curve"][best_index]["step"]
    assert result["objective"]["value"] == pytest.approx(min(values))
    without = run_trial(compose_cfg(*alpaca_args, "trainer.max_steps=8"), run_dir=tmp_path / "all")
    assert without["stopped_early"] is False and without["steps"] == 8


def test_a_pruned_trial_records_its_curves_and_the_study_holds_them(compose_cfg, shared_data, tmp_path, monkeypatch):
    """The median pruner (no start-up) prunes a trial below the finished one's curve at the first report."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0}))
    trial = study.ask()
    monkeypatch.setenv("LORASWEEP_STUDY_NAME", "prune")
    monkeypatch.setenv("LORASWEEP_TRIAL_NUMBER", str(trial.number))
    cfg = compose_cfg(
        "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "finetune=full", "trainer.max_steps=4", "trainer.eval_every=1", "trainer.batch_size=4", "task.max_length=32",
        "trainer.device=cpu", f"hydra.sweeper.storage={storage}", "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=0", "hydra.sweeper.pruner.n_warmup_steps=0",
    )  # fmt: skip
    with pytest.raises(optuna.TrialPruned, match="pruned at step 1"):
        run_trial(cfg, run_dir=tmp_path / "run")
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # what the sweeper does with the exception

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "pruned" and metrics["objective"] == {}
    # step 0 is the untouched model (never reported to the pruner), step 1 the pruned report
    assert metrics["steps"] == 1 and [p["step"] for p in metrics["val_curve"]] == [0, 1]
    assert len(metrics["train_curve"]) == 1 and metrics["tokens_per_s_overall"] > 0 and metrics["peak_memory_mb"] > 0
    assert metrics["metrics"]["val_accuracy"] == max(p["val_accuracy"] for p in metrics["val_curve"]) < 1.0
    assert not (tmp_path / "run" / "checkpoint").exists()
    stored = study.trials[trial.number]
    assert stored.state == optuna.trial.TrialState.PRUNED
    assert stored.user_attrs["status"] == "pruned" and stored.user_attrs["steps"] == 1
    assert stored.intermediate_values == {1: metrics["val_curve"][1]["val_accuracy"]}


class OutOfMemoryAt:
    """A global forward hook raising CUDA's out-of-memory error at the `n`-th forward of the whole model (1-based)
    in the given mode, as an allocator would; removed on exit."""

    def __init__(self, n: int, *, training: bool) -> None:
        self.n, self.training, self.seen = n, training, 0

    def __enter__(self) -> OutOfMemoryAt:
        self.handle = torch.nn.modules.module.register_module_forward_hook(self.hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def hook(self, module: torch.nn.Module, args: object, output: object) -> None:
        if type(module).__name__ == "GPT" and module.training == self.training:
            self.seen += 1
            if self.seen == self.n:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)\nmore details")


@pytest.mark.parametrize(
    ("where", "hook"),
    [("training", lambda val_batches: OutOfMemoryAt(1, training=True)),
     # the validation split is scored twice (the untouched model at step 0, then after step 1) before the test split
     ("evaluation", lambda val_batches: OutOfMemoryAt(2 * val_batches + 1, training=False))],
    ids=["training-step", "test-evaluation"],
)  # fmt: skip
def test_out_of_memory_is_one_line_naming_the_settings_that_set_the_size(
    compose_cfg, shared_data, tmp_path, where, hook
):
    cfg = compose_cfg(
        "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "finetune=lora", "trainer.max_steps=1", "trainer.batch_size=4", "trainer.eval_batch_size=64",
        "task.max_length=32", "trainer.device=cpu", "trainer.save_checkpoint=false",
    )  # fmt: skip
    from tasks import get_task

    val_rows = len(get_task(cfg.task).load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir).val)
    with hook(math.ceil(val_rows / 64)), pytest.raises(TrialOutOfMemoryError) as info:
        run_trial(cfg, run_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and message.startswith("out of memory on cpu")
    for setting in ("model=tiny", "finetune=lora", "trainer.batch_size=4", "task.max_length=32", "precision=fp32",
                    "grad_checkpointing=False", "Tried to allocate 2.00 GiB"):  # fmt: skip
        assert setting in message, message
    if where == "evaluation":
        assert "trainer.eval_batch_size=64" in message and "evaluating and generating" in message
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


# ------------------------------------------------------------------------------------ fp16 (CUDA only)
# fp16 needs a GradScaler, which only runs on CUDA (trainer.precision=fp16 is refused elsewhere, tested in
# test_trainer.py). These run where a GPU is present and are skipped on CPU-only machines.

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs CUDA")


@cuda
def test_fp16_steps_skip_an_overflow_and_train_otherwise(compose_cfg, shared_data):
    from tasks import get_task
    from tasks.batching import iterate_batches
    from tasks.train.build import build_model
    from tasks.train.loop import train_step
    from tasks.train.optim import build_optimizer
    from tasks.train.runtime import resolve_runtime

    cfg = compose_cfg(
        "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "finetune=full", "trainer.device=cuda", "trainer.precision=fp16", "task.max_length=32",
    )  # fmt: skip
    runtime = resolve_runtime("cuda", "fp16")
    task = get_task(cfg.task)
    data = task.load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir)
    model = build_model(cfg, task.num_classes, runtime)
    optimizer = build_optimizer(model, cfg.optim, runtime.device)
    batch = next(iter(iterate_batches(data.train, 8)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # a scale so large that the fp16 gradients overflow: the step is skipped and the scale backs off
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**60)
    loss = train_step(model, task, [batch], optimizer, runtime, step=0, lr=1e-3, grad_clip=1.0, scaler=scaler)
    assert math.isfinite(loss) and scaler.get_scale() < 2.0**60
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())

    scaler = torch.amp.GradScaler("cuda")
    loss = train_step(model, task, [batch], optimizer, runtime, step=1, lr=1e-3, grad_clip=1.0, scaler=scaler)
    assert math.isfinite(loss) and any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 is autocast only; master weights fp32


@cuda
def test_an_fp16_trial_runs_end_to_end_on_cuda(compose_cfg, shared_data, tmp_path):
    cfg = compose_cfg(
        "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "finetune=lora", "trainer.device=cuda", "trainer.precision=fp16", "trainer.max_steps=20",
        "trainer.eval_every=10", "task.max_length=64", "optim.lr=1e-3",
    )  # fmt: skip
    result = run_trial(cfg, run_dir=tmp_path)
    assert result["precision"] == "fp16" and result["peak_memory_source"] == "cuda_max_allocated"
    losses = [p["loss"] for p in result["train_curve"]]
    assert all(math.isfinite(v) for v in losses) and len(losses) == 20
    assert math.isfinite(result["metrics"]["val_loss"]) and 0 <= result["metrics"]["val_accuracy"] <= 1
