"""One trial end to end (issue [3]): the loop's arithmetic, what a run records, and how it fails."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import run_sweep_py

from tasks.train.build import build_model
from tasks.train.loop import evaluate, fit, loss_tokens, train_step
from tasks.train.optim import lr_at
from tasks.train.runtime import resolve_runtime
from tasks.train.trial import run_trial

METRICS_FIELDS = {
    "objective", "metrics", "summary", "train_curve", "val_curve", "wall_time_s", "tokens_per_s", "peak_memory_mb",
    "trainable_params", "total_params", "device", "precision", "seed", "config", "run_dir", "code_version",
}  # fmt: skip


@pytest.fixture
def sms_args(shared_data):
    return ["model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}"]


@pytest.fixture
def alpaca_args(shared_data):
    return [
        "model=tiny", "task=alpaca", f"task.path={shared_data / 'alpaca' / 'alpaca_sample.json'}",
        "task.train_size=400", "task.val_size=64", "task.test_size=8", "task.val_generate_size=8",
        "judge.enabled=false",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------- the learning rate


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_follows_its_formula_at_start_end_of_warmup_and_last_step(schedule):
    total, base, ratio, floor = 100, 3e-4, 0.1, 0.1
    warmup = 10
    lr = [lr_at(s, total, base, schedule, ratio, floor) for s in range(total)]
    # warmup is linear from base/(W+1) and reaches base right after it
    assert lr[0] == pytest.approx(base / (warmup + 1))
    assert lr[warmup - 1] == pytest.approx(base * warmup / (warmup + 1))
    assert lr[warmup] == pytest.approx(base)
    progress = (total - 1 - warmup) / (total - warmup)
    expected_last = {
        "cosine": base * floor + (base - base * floor) * 0.5 * (1 + math.cos(math.pi * progress)),
        "linear": base - (base - base * floor) * progress,
        "constant": base,
    }[schedule]
    assert lr[-1] == pytest.approx(expected_last)
    after = lr[warmup:]
    assert all(a >= b for a, b in itertools.pairwise(after)), "the lr never rises after warmup"
    assert min(after) >= base * floor - 1e-12, "decay stops at min_lr_ratio x lr"


def test_no_warmup_starts_at_the_base_lr():
    assert lr_at(0, 50, 1e-3, "cosine", 0.0) == pytest.approx(1e-3)


def test_lora_plus_keeps_b_at_ratio_times_a_at_every_step_of_the_schedule(compose_cfg, sms_args):
    """lora.lr_ratio=4 through build_model, build_optimizer and fit: every optimizer step (warmup, then cosine) runs
    A at the schedule's lr and B at 4x it, read from the optimizer's groups as torch steps them."""
    from model.lora import lora_adapters
    from tasks import get_task
    from tasks.train.loop import FitState
    from tasks.train.optim import build_optimizer

    cfg = compose_cfg(
        *sms_args, "finetune=lora", "lora.lr_ratio=4", "lora.targets=[q,v]", "trainer.max_steps=6",
        "schedule.warmup_ratio=0.5", "trainer.batch_size=8", "task.max_length=32",
    )  # fmt: skip
    runtime = resolve_runtime("cpu", "fp32")
    task = get_task(cfg.task)
    data = task.load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir)
    model = build_model(cfg, task.num_classes, runtime)
    optimizer = build_optimizer(model, cfg.optim, runtime.device, lr_ratio=cfg.lora.lr_ratio)
    adapters = lora_adapters(model).values()
    a_ids = {id(a.lora_a.weight) for a in adapters}
    b_ids = {id(a.lora_b.weight) for a in adapters}
    seen: list[tuple[set[float], set[float]]] = []
    step = optimizer.step

    def recording_step(*args, **kwargs):  # torch's own step, after noting each group's lr as it steps
        lr_of = lambda ids: {g["lr"] for g in optimizer.param_groups for p in g["params"] if id(p) in ids}
        seen.append((lr_of(a_ids), lr_of(b_ids)))
        return step(*args, **kwargs)

    optimizer.step = recording_step
    state = FitState()
    fit(model, task, data, optimizer, runtime, cfg, state=state, eval_key="val_accuracy",
        eval_direction="maximize", report=False)  # fmt: skip
    schedule = [lr_at(s, 6, cfg.optim.lr, "cosine", 0.5) for s in range(6)]
    assert len(seen) == 6 and max(schedule) > 3 * min(schedule), "six steps, the lr rising then falling"
    for (a_lr, b_lr), lr in zip(seen, schedule, strict=True):
        assert len(a_lr) == len(b_lr) == 1, "every A at one lr, every B at one lr"
        assert (a_lr.pop(), b_lr.pop()) == (pytest.approx(lr), pytest.approx(4 * lr))
    assert [row["lr"] for row in state.train_curve] == pytest.approx(schedule)


# ------------------------------------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("task_name", ["sms_spam", "alpaca"])
def test_accumulating_two_half_batches_makes_the_same_update_as_one_batch(
    task_name, compose_cfg, sms_args, alpaca_args
):
    """batch 8 x accum 1 == batch 4 x accum 2, also when the halves hold different numbers of loss tokens."""
    from tasks import get_task
    from tasks.batching import iterate_batches

    cfg = compose_cfg(*(sms_args if task_name == "sms_spam" else alpaca_args), "finetune=full", "optim=sgd")
    runtime = resolve_runtime("cpu", "fp32")
    task = get_task(cfg.task)
    data = task.load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir)
    (batch8,) = list(iterate_batches(data.train, 8, shuffle=False))[:1]
    halves = list(iterate_batches(data.train, 4, shuffle=False))[:2]
    lengths = lambda b: b["attention_mask"].sum(1)
    assert torch.equal(torch.cat([lengths(h) for h in halves]), lengths(batch8)), "the halves hold the same rows"
    if task_name == "alpaca":
        assert loss_tokens(halves[0]) != loss_tokens(halves[1]), "uneven halves exercise the token weighting"

    torch.manual_seed(0)
    model = build_model(cfg, task.num_classes, runtime)
    twin = copy.deepcopy(model)
    sgd = lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    opt_a, opt_b = sgd(model), sgd(twin)
    loss_a = train_step(model, task, [batch8], opt_a, runtime, step=0, lr=1.0, grad_clip=None)
    loss_b = train_step(twin, task, halves, opt_b, runtime, step=0, lr=1.0, grad_clip=None)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


# ------------------------------------------------------------------------------------------- what a trial records


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lora_with_frozen_blocks_trains_only_adapters_and_head(compose_cfg, sms_args):
    from model import PRESETS  # noqa: F401  (the tiny preset has 2 blocks)
    from tasks import get_task
    from tasks.train.loop import FitState
    from tasks.train.optim import build_optimizer

    cfg = compose_cfg(*sms_args, "finetune=lora", "freeze.blocks=1", "trainer.max_steps=6", "trainer.batch_size=8")
    runtime = resolve_runtime("cpu", "fp32")
    task = get_task(cfg.task)
    data = task.load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir)
    model = build_model(cfg, task.num_classes, runtime)
    before = _snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(model, cfg.optim, runtime.device)
    fit(model, task, data, optimizer, runtime, cfg, state=FitState(), eval_key="val_accuracy",
        eval_direction="maximize", report=False)  # fmt: skip
    after = _snapshot(model)
    frozen = set(before) - trainable
    assert frozen, "base weights are frozen under LoRA"
    assert all(torch.equal(before[n], after[n]) for n in frozen), "frozen tensors are bit-identical"
    assert not any(".h.0." in n or n.startswith("h.0.") for n in trainable), "no adapters train in frozen block 0"
    changed = {n for n in trainable if not torch.equal(before[n], after[n])}
    assert any("lora" in n for n in changed) and changed - {n for n in changed if "lora" in n}, (
        "LoRA adapters and the classification head both trained"
    )


def test_saved_adapter_holds_only_lora_and_head_and_reproduces_the_metric(compose_cfg, sms_args, tmp_path):
    from safetensors import safe_open

    from model.checkpoint import load_trainable
    from tasks import get_task

    cfg = compose_cfg(*sms_args, "finetune=lora", "freeze.blocks=1", "trainer.max_steps=8", "trainer.batch_size=8")
    result = run_trial(cfg, run_dir=tmp_path / "run")
    files = list((tmp_path / "run" / "checkpoint").glob("*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), "pt") as f:
        keys = set(f.keys())
    assert keys and all("lora" in k or k.startswith(("score", "classifier", "head")) for k in keys), keys

    # a fresh model of the same config + the adapter gives the same validation accuracy
    runtime = resolve_runtime("cpu", "fp32")
    task = get_task(cfg.task)
    data = task.load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir)
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg, task.num_classes, runtime)
    load_trainable(model, tmp_path / "run" / "checkpoint")
    val = evaluate(model, task, data.val, runtime, batch_size=cfg.trainer.batch_size)
    assert val["accuracy"] == pytest.approx(result["metrics"]["val_accuracy"])


def test_same_seed_and_config_repeat_exactly_on_cpu(compose_cfg, sms_args, tmp_path):
    overrides = (*sms_args, "finetune=full", "trainer.max_steps=5", "trainer.batch_size=4", "trainer.eval_every=2")
    first = run_trial(compose_cfg(*overrides), run_dir=tmp_path / "a")
    second = run_trial(compose_cfg(*overrides), run_dir=tmp_path / "b")
    assert first["metrics"] == second["metrics"]
    assert first["train_curve"] == second["train_curve"]
    assert first["val_curve"] == second["val_curve"]


# ---------------------------------------------------------------------------- sweep.py, as a user runs it


@pytest.mark.slow
def test_sms_spam_trial_beats_the_majority_class(sms_args, tmp_path):
    run_sweep_py(
        *sms_args, "finetune=full", "optim.lr=2e-3", "trainer.max_steps=150", "trainer.batch_size=16",
        "trainer.eval_every=50", "task.max_length=64", f"hydra.run.dir={tmp_path}", f"paths.root_dir={tmp_path}",
    )  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) >= METRICS_FIELDS
    assert metrics["objective"]["name"] == "accuracy" and metrics["objective"]["direction"] == "maximize"
    assert metrics["objective"]["value"] == metrics["metrics"]["val_accuracy"]
    counts = metrics["data"]["splits"]["val"]["class_counts"]
    majority = max(counts.values()) / sum(counts.values())
    assert metrics["metrics"]["val_accuracy"] > majority + 0.02
    assert metrics["metrics"]["majority_val_accuracy"] == pytest.approx(majority)
    assert metrics["metrics"]["learned"] is True and metrics["metrics"]["flags"] == ""
    assert metrics["train_curve"][0]["step"] == 1 and len(metrics["train_curve"]) == 150
    assert metrics["trainable_params"] == metrics["total_params"] > 0


@pytest.mark.slow
def test_alpaca_trial_lowers_validation_perplexity(alpaca_args, tmp_path):
    run_sweep_py(
        *alpaca_args, "finetune=full", "optim.lr=2e-3", "trainer.max_steps=40", "trainer.batch_size=8",
        "trainer.eval_every=20", f"hydra.run.dir={tmp_path}",
        f"paths.root_dir={tmp_path}",
    )  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    curve = [point["val_perplexity"] for point in metrics["val_curve"]]
    assert metrics["val_curve"][0]["step"] == 0
    assert min(curve[1:]) < curve[0]
    assert metrics["objective"]["direction"] == "minimize"


def test_exploding_loss_ends_with_the_dedicated_error_not_a_traceback(sms_args, tmp_path):
    proc = run_sweep_py(
        *sms_args, "finetune=full", "optim.lr=1e6", "trainer.grad_clip=null", "trainer.max_steps=30",
        f"hydra.run.dir={tmp_path}", f"paths.root_dir={tmp_path}", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "training loss became" in proc.stderr


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("freeze.blocks=3", "freeze.blocks"),
        ("lora.rank=0", "lora.rank"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("schedule.warmup_ratio=1.0", "schedule.warmup_ratio"),
        ("trainer.precision=fp16", "trainer.precision=fp16"),
    ],
)
def test_bad_settings_fail_in_one_line_before_the_model_is_built(override, field, sms_args, tmp_path):
    proc = run_sweep_py(*sms_args, override, f"hydra.run.dir={tmp_path}", f"paths.root_dir={tmp_path}", check=False)
    assert proc.returncode == 1
    error_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert error_lines[-1].startswith("error: ") and field in error_lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_a_sweep_reuses_the_result_of_an_equivalent_finished_trial(sms_args, tmp_path):
    """Full fine-tuning ignores lora.rank: a grid over ranks holds one distinct config, trained once."""
    import optuna

    storage = f"sqlite:///{tmp_path / 's.db'}"
    run_sweep_py(
        "-m", *sms_args, "finetune=full", "lora.rank=2,4", "hydra/sweeper/sampler=grid", "trainer.max_steps=3",
        f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=dup", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"paths.root_dir={tmp_path}",
    )  # fmt: skip
    first, second = optuna.load_study(study_name="dup", storage=storage).trials
    assert first.state == second.state == optuna.trial.TrialState.COMPLETE
    assert second.user_attrs["duplicate_of"] == first.number and second.value == first.value
    assert second.user_attrs["config_fingerprint"] == first.user_attrs["config_fingerprint"]
    assert second.intermediate_values == first.intermediate_values
    copied = json.loads((Path(second.user_attrs["run_dir"]) / "metrics.json").read_text())
    assert copied["status"] == "duplicate" and not (Path(second.user_attrs["run_dir"]) / "checkpoint").exists()
