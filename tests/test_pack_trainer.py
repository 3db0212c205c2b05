"""Packed training (issue [15] item 2): a packed trial's result equals the same trial run alone.

Same seed, adapter dropout 0: the same training losses and learning rates at every step, the same validation curve,
best step and final metrics, to float tolerance, for members that differ in rank, targets (q, v among them), variant,
LoRA+ ratio, batch size, gradient accumulation, schedule, learning rate, frozen blocks, evaluation cadence, patience
and steps; for a member pruned mid-way by a real Optuna pruner; and members with their own seeds over a pretrained
base.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from model_refs import hf_gpt2, save_hf

from sweeper import trial_handle
from tasks.train.pack import ListSource, MemberSpec, pack_key, run_pack
from tasks.train.trial import run_trial

TOL = {"rel": 2e-4, "abs": 2e-5}
COMMON = ("trainer.max_eval_batches=3", "trainer.reuse=off", "trainer.save_checkpoint=false", "lora.dropout=0",
          "task.max_length=48", "task.test_size=0.03", "task.val_size=0.05")  # fmt: skip
MEMBERS = {
    "0": ("lora.rank=2", "lora.targets=[q,v,fc]", "lora.lr_ratio=16", "trainer.batch_size=4", "trainer.max_steps=6",
          "trainer.eval_every=2", "optim.lr=3e-3"),
    "1": ("lora.rank=8", "lora.targets=[qkv,mlp_proj]", "lora.variant=dora", "trainer.batch_size=6",
          "trainer.grad_accum=2", "schedule=linear", "freeze.blocks=1", "trainer.max_steps=4", "trainer.eval_every=3",
          "optim.lr=1e-2"),
    "2": ("lora.rank=4", "lora.alpha=4", "lora.targets=[fc,mlp_proj]", "lora.rslora=true", "trainer.batch_size=3",
          "schedule=constant", "trainer.max_steps=9", "trainer.eval_every=1", "trainer.patience=2", "optim.lr=5e-2"),
}  # fmt: skip


@pytest.fixture
def sms(shared_data: Path) -> tuple[str, ...]:
    return ("model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}", *COMMON)


def assert_same_result(packed: dict, alone: dict) -> None:
    """The numbers a trial produced: curves, best point, steps, early stop, final metrics."""
    assert packed["status"] == alone["status"] and packed["steps"] == alone["steps"]
    assert packed["stopped_early"] == alone["stopped_early"]
    assert [p["step"] for p in packed["train_curve"]] == [p["step"] for p in alone["train_curve"]]
    assert [p["lr"] for p in packed["train_curve"]] == pytest.approx([p["lr"] for p in alone["train_curve"]])
    assert [p["loss"] for p in packed["train_curve"]] == pytest.approx([p["loss"] for p in alone["train_curve"]], **TOL)
    assert len(packed["val_curve"]) == len(alone["val_curve"])
    for mine, theirs in zip(packed["val_curve"], alone["val_curve"], strict=True):
        assert mine.keys() == theirs.keys() and mine == pytest.approx(theirs, **TOL)
    numbers = {k: v for k, v in alone["metrics"].items() if isinstance(v, float)}
    assert numbers and {k: packed["metrics"][k] for k in numbers} == pytest.approx(numbers, **TOL)
    assert packed["metrics"].get("best_step") == alone["metrics"].get("best_step")


def test_packed_trials_equal_the_same_trials_alone(compose_cfg, sms, tmp_path: Path) -> None:
    cfgs = {key: compose_cfg(*sms, *overrides) for key, overrides in MEMBERS.items()}
    assert len({pack_key(cfg) for cfg in cfgs.values()}) == 1
    specs = [MemberSpec(key, cfg, None, tmp_path / "pack" / key) for key, cfg in cfgs.items()]
    source = ListSource(specs)
    run_pack(cfgs["0"], source, size=2)  # 3 trials in 2 places: the third joins when the first leaves
    for key, cfg in cfgs.items():
        alone = run_trial(cfg, run_dir=tmp_path / "alone" / key)
        outcome = source.outcomes[key]
        assert outcome.state == "complete" and outcome.value == pytest.approx(alone["objective"]["value"], **TOL)
        assert_same_result(outcome.result, alone)
        written = json.loads((tmp_path / "pack" / key / "metrics.json").read_text())
        assert written["pack_size"] == 2 and written["peak_memory_own"] is False
        assert written["pack_peak_memory_mb"] >= written["peak_memory_mb"] > 0
        assert written["train_time_s"] > 0 and written["tokens_per_s_overall"] > 0
    assert source.outcomes["2"].result["stopped_early"]  # patience ended it inside the pack, as alone


def test_a_member_pruned_mid_way_records_what_it_measured_as_alone(
    compose_cfg, sms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MedianPruner against a finished trial at accuracy 1.0: both copies are pruned at the first report after
    warm-up (step 4), with the same curves; the other member of the pack completes."""
    study = optuna.create_study(study_name="prune", storage=f"sqlite:///{tmp_path / 'p.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={s: 1.0 for s in range(1, 20)}))
    pruning = ("hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
               "hydra.sweeper.pruner.n_warmup_steps=3",
               f"hydra.sweeper.storage=sqlite:///{tmp_path / 'p.db'}")  # fmt: skip
    cfg = compose_cfg(*sms, *pruning, *MEMBERS["0"])
    other = compose_cfg(*sms, *pruning, *MEMBERS["1"])
    alone_trial, packed_trial = study.ask(), study.ask()
    monkeypatch.setenv("LORASWEEP_STUDY_NAME", "prune")
    monkeypatch.setenv("LORASWEEP_TRIAL_NUMBER", str(alone_trial.number))
    with pytest.raises(optuna.TrialPruned):
        run_trial(cfg, run_dir=tmp_path / "alone")
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    monkeypatch.delenv("LORASWEEP_TRIAL_NUMBER")
    specs = [MemberSpec("p", cfg, trial_handle("prune", packed_trial.number), tmp_path / "pack" / "p"),
             MemberSpec("o", other, None, tmp_path / "pack" / "o")]  # fmt: skip
    source = ListSource(specs)
    run_pack(cfg, source, size=2)
    assert source.outcomes["p"].state == "pruned" and source.outcomes["o"].state == "complete"
    packed = source.outcomes["p"].result
    assert alone["status"] == "pruned" and alone["steps"] == 4
    assert_same_result(packed, alone)
    stored = optuna.load_study(study_name="prune", storage=f"sqlite:///{tmp_path / 'p.db'}").trials
    assert stored[packed_trial.number].intermediate_values == pytest.approx(
        stored[alone_trial.number].intermediate_values, **TOL
    )


def test_members_with_their_own_seeds_over_a_pretrained_base_equal_them_alone(compose_cfg, sms, tmp_path: Path):
    folder = save_hf(hf_gpt2(n_layer=2, n_head=2, n_embd=32, seed=3), tmp_path / "hf")
    base = (*sms, "model.pretrained=true", f"model.hub_id={folder}", "trainer.max_steps=3", "trainer.eval_every=2")
    cfgs = {str(seed): compose_cfg(*base, f"trainer.seed={seed}", f"lora.rank={1 + seed % 3}") for seed in (1, 7)}
    assert len({pack_key(cfg) for cfg in cfgs.values()}) == 1  # a pretrained base does not depend on the seed
    source = ListSource(MemberSpec(k, cfg, None, tmp_path / "pack" / k) for k, cfg in cfgs.items())
    run_pack(cfgs["1"], source, size=2)
    for key, cfg in cfgs.items():
        assert_same_result(source.outcomes[key].result, run_trial(cfg, run_dir=tmp_path / "alone" / key))


def test_a_member_that_fails_or_cannot_share_the_base_fails_alone(compose_cfg, sms, tmp_path: Path) -> None:
    """A non-finite loss, full fine-tuning, another seed over a random base: each fails in one line; the member
    beside them still equals itself alone."""
    good = compose_cfg(*sms, *MEMBERS["0"])
    bad = compose_cfg(*sms, "optim.lr=1e6", "trainer.grad_clip=null", "trainer.max_steps=30", "trainer.eval_every=10")
    full = compose_cfg(*sms, "finetune=full", "trainer.max_steps=2")
    other_seed = compose_cfg(*sms, *MEMBERS["0"], "trainer.seed=5")  # a random base is drawn from the seed
    cfgs = {"good": good, "bad": bad, "full": full, "seed": other_seed}
    source = ListSource(MemberSpec(key, cfg, None, tmp_path / key) for key, cfg in cfgs.items())
    run_pack(good, source, size=4)
    assert source.outcomes["bad"].state == "fail" and "training loss became" in source.outcomes["bad"].reason
    assert "finetune=full trains the base weights" in source.outcomes["full"].reason
    assert "trainer.seed: 42 != 5" in source.outcomes["seed"].reason
    for key in ("bad", "full", "seed"):
        assert "\n" not in source.outcomes[key].reason and not (tmp_path / key / "metrics.json").exists()
    assert_same_result(source.outcomes["good"].result, run_trial(good, run_dir=tmp_path / "alone"))
