"""Costs a report can trust (issue [12] item 5): steady-state throughput without warm-up or evaluation, its spread,
and the machine's load. The loop runs for real; only the clock is scripted, so the expected figures are exact."""

from __future__ import annotations

import time

import pytest

from tasks import get_task
from tasks.train.build import build_model
from tasks.train.costs import steady_state, warmup_steps
from tasks.train.loop import FitState, fit
from tasks.train.optim import build_optimizer
from tasks.train.runtime import resolve_runtime
from tasks.train.trial import run_trial

WARMUP_S, STEP_S, EVAL_S = 50.0, 1.0, 1000.0


class Clock:
    """`time.perf_counter` for the test: it moves only when the task says work was done."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ClockedTask:
    """The real task; each loss costs `WARMUP_S` for the first two steps then `STEP_S`, each evaluation `EVAL_S`."""

    def __init__(self, task, clock: Clock) -> None:
        self.task, self.clock, self.losses = task, clock, 0

    def compute_loss(self, model, batch):
        self.losses += 1
        self.clock.now += WARMUP_S if self.losses <= 2 else STEP_S
        return self.task.compute_loss(model, batch)

    def evaluate(self, model, batches):
        self.clock.now += EVAL_S
        return self.task.evaluate(model, batches)


def test_warmup_is_two_steps_or_a_tenth():
    assert [warmup_steps(n) for n in (1, 5, 20, 21, 100, 1000)] == [2, 2, 2, 3, 10, 100]


def test_steady_state_figures_leave_out_warmup_and_evaluation(compose_cfg, shared_data, monkeypatch):
    cfg = compose_cfg(
        "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "finetune=full", "trainer.max_steps=20", "trainer.batch_size=8", "trainer.eval_every=5",
        "trainer.max_eval_batches=1", "task.max_length=32",
    )  # fmt: skip
    runtime = resolve_runtime("cpu", "fp32")
    task = get_task(cfg.task)
    data = task.load(cfg.task, n_positions=1024, cache_dir=cfg.paths.cache_dir)
    model = build_model(cfg, task.num_classes, runtime)
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    state = fit(model, ClockedTask(task, clock), data, build_optimizer(model, cfg.optim, runtime.device), runtime,
                cfg, state=FitState(), eval_key="val_accuracy", eval_direction="maximize", report=False)  # fmt: skip
    monkeypatch.undo()
    assert len(state.val_curve) == 5, "step 0 and every 5 steps: 5 evaluations, 5000 s the steps must not see"
    assert state.step_times == [WARMUP_S] * 2 + [STEP_S] * 18
    costs = steady_state(state.step_times, state.step_tokens)
    assert costs["warmup_steps_excluded"] == 2 and costs["steady_steps"] == 18
    assert costs["step_time_s"] == costs["step_time_s_p10"] == costs["step_time_s_p90"] == STEP_S
    rates = sorted(t / STEP_S for t in state.step_tokens[2:])
    assert costs["tokens_per_s"] == pytest.approx((rates[8] + rates[9]) / 2)  # the median of 18
    assert costs["tokens_per_s_p10"] <= costs["tokens_per_s"] <= costs["tokens_per_s_p90"]
    assert costs["tokens_per_s_overall"] == pytest.approx(sum(state.step_tokens) / (2 * WARMUP_S + 18 * STEP_S))


def test_too_few_steps_give_no_steady_figure_rather_than_a_warmup_one():
    costs = steady_state([3.0, 2.0], [100, 100])
    assert costs["steady_steps"] == 0 and costs["tokens_per_s"] is None and costs["step_time_s"] is None
    assert costs["tokens_per_s_overall"] == 40.0


def test_a_trial_records_its_cost_spread_and_the_machine_load(compose_cfg, shared_data, tmp_path):
    cfg = compose_cfg(
        "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "trainer.max_steps=12", "trainer.batch_size=8", "task.max_length=32",
    )  # fmt: skip
    result = run_trial(cfg, run_dir=tmp_path / "run")
    assert result["steady_steps"] == 10 and result["warmup_steps_excluded"] == 2
    assert result["step_time_s_p10"] <= result["step_time_s"] <= result["step_time_s_p90"]
    assert result["tokens_per_s_p10"] <= result["tokens_per_s"] <= result["tokens_per_s_p90"]
    assert result["tokens_per_s_overall"] == pytest.approx(result["train_tokens"] / result["train_time_s"])
    assert result["cpu_count"] >= 1 and result["device_name"]
    for when in ("start", "end"):
        assert result[f"load_1m_{when}"] >= 0 and result[f"load_5m_{when}"] >= 0
