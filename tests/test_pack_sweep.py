"""Packed sweeps (issue [15] item 1): `hydra.sweeper.pack.size` through sweep.py, a real SQLite study.

The same study run packed and unpacked gives every trial the same state and result; each packed trial is its own
Optuna trial with its own folder and metrics.json. Bad packing settings stop the sweep in one line before a trial.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from helpers import run_sweep_py
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from optuna.trial import TrialState

from sweeper._pack import check_packing
from sweeper._pack_job import PACK_ATTR
from sweeper._phase import confirmation_of
from sweeper._settings import build_settings

TOL = {"rel": 2e-4, "abs": 2e-5}


def sweep_args(shared_data: Path, tmp_path: Path, name: str) -> list[str]:
    """A grid of 4 trials: the 6-step ones are pruned at step 4 (ThresholdPruner: accuracy below 0.99 after 3
    warm-up steps, whatever the other trials did), the 2-step ones complete."""
    return [
        "-m", "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "task.max_length=32", "task.val_size=0.04", "task.test_size=0.01", "trainer.batch_size=4",
        "trainer.eval_every=2", "trainer.max_eval_batches=2", "trainer.save_checkpoint=false", "lora.dropout=0",
        "lora.rank=1,4", "trainer.max_steps=2,6", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=4",
        "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=0.99", "hydra.sweeper.pruner.n_warmup_steps=3",
        f"paths.root_dir={tmp_path}", f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}",
        f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={tmp_path / name}",
    ]  # fmt: skip


def by_params(study: optuna.Study) -> dict[tuple, optuna.trial.FrozenTrial]:
    return {tuple(sorted(t.params.items())): t for t in study.trials}


@pytest.mark.slow
def test_a_packed_sweep_equals_the_same_sweep_unpacked(shared_data: Path, tmp_path: Path) -> None:
    run_sweep_py(*sweep_args(shared_data, tmp_path, "packed"), "hydra.sweeper.pack.size=3", cwd=tmp_path)
    run_sweep_py(*sweep_args(shared_data, tmp_path, "alone"), cwd=tmp_path)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    packed = by_params(optuna.load_study(study_name="packed", storage=storage))
    alone = by_params(optuna.load_study(study_name="alone", storage=storage))
    assert packed.keys() == alone.keys() and len(packed) == 4
    assert sorted(t.state.name for t in packed.values()) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    run_dirs = set()
    for params, trial in packed.items():
        twin = alone[params]
        assert trial.state == twin.state, params
        assert trial.intermediate_values == pytest.approx(twin.intermediate_values, **TOL)
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(twin.value, **TOL)
        mine = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        theirs = json.loads((Path(twin.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert mine["status"] == theirs["status"] and mine["steps"] == theirs["steps"]
        assert [p["loss"] for p in mine["train_curve"]] == pytest.approx([p["loss"] for p in theirs["train_curve"]],
                                                                           **TOL)  # fmt: skip
        assert trial.user_attrs["pack_id"] == "0" and trial.user_attrs["peak_memory_own"] is False
        assert "pack_size" not in twin.user_attrs
        run_dirs.add(trial.user_attrs["run_dir"])
    assert len(run_dirs) == 4  # one job, each trial its own folder, as alone
    assert max(t.user_attrs["pack_size"] for t in packed.values()) == 3


def test_pack_size_below_one_is_refused_in_one_line() -> None:
    line = r"`pack.size` must be an integer >= 1 \(1 = no packing\), but got pack.size=0"
    with pytest.raises(ValueError, match=line):
        build_settings(sampler={"_target_": "optuna.samplers.TPESampler"}, pruner={"_target_": "x.Y"},
                       direction="maximize", n_trials=1, n_jobs=1, max_failure_rate=0.5, pack={"size": 0})  # fmt: skip


def test_sweep_py_refuses_pack_size_zero_in_one_line_before_any_trial(shared_data: Path, tmp_path: Path) -> None:
    proc = run_sweep_py(*sweep_args(shared_data, tmp_path, "zero"), "hydra.sweeper.pack.size=0", cwd=tmp_path,
                        check=False)  # fmt: skip
    assert proc.returncode != 0
    line = "error: `pack.size` must be an integer >= 1 (1 = no packing), but got pack.size=0."
    assert proc.stderr.strip() == line, proc.stderr
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "zero").exists()


def test_packing_refuses_a_launcher_without_the_study_or_hydra_in_its_jobs(compose_cfg) -> None:
    import sweep  # noqa: F401  (registers the app's pack key, as `python sweep.py` does)

    probes = [compose_cfg("model=tiny")]
    with pytest.raises(ValueError, match="needs a study its jobs can reach, but got storage=null"):
        check_packing(4, JoblibLauncher(), None, probes)
    assert check_packing(4, JoblibLauncher(), "sqlite:///s.db", probes) is not None
    with pytest.raises(ValueError, match="needs a launcher whose jobs get Hydra's config loader"):
        check_packing(4, object(), "sqlite:///s.db", probes)


@pytest.mark.slow
def test_packing_full_fine_tuning_alone_is_refused_before_any_trial(shared_data: Path, tmp_path: Path) -> None:
    proc = run_sweep_py(
        *sweep_args(shared_data, tmp_path, "full"), "finetune=full", "hydra.sweeper.pack.size=4", cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    line = "no trial of this search space can (finetune=full trains the base weights, which a pack shares)"
    assert line in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "full").exists()


@pytest.mark.slow
def test_a_member_that_fails_is_failed_alone_and_its_pack_mate_completes(shared_data: Path, tmp_path: Path) -> None:
    dropped = ("lora.rank=", "trainer.max_", "hydra/sweeper/pruner", "hydra.sweeper.pruner", "hydra.sweeper.n_")
    args = [a for a in sweep_args(shared_data, tmp_path, "fails") if not a.startswith(dropped)]
    run_sweep_py(
        *args, "optim.lr=3e-4,1e6", "trainer.grad_clip=null", "trainer.max_steps=4", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.pack.size=2", cwd=tmp_path,
    )  # fmt: skip
    study = optuna.load_study(study_name="fails", storage=f"sqlite:///{tmp_path / 's.db'}")
    states = {t.params["optim.lr"]: t for t in study.trials}
    failed, complete = states[1e6], states[3e-4]
    assert failed.state == TrialState.FAIL and "training loss became" in failed.user_attrs["fail_reason"]
    assert complete.state == TrialState.COMPLETE and complete.user_attrs["pack_id"] == "0"
    assert failed.user_attrs["run_dir"] != complete.user_attrs["run_dir"]
    assert (Path(complete.user_attrs["run_dir"]) / "metrics.json").is_file()


@pytest.mark.slow
def test_pissa_and_confirmation_runs_train_alone_beside_packed_trials(shared_data: Path, tmp_path: Path) -> None:
    """lora_method=lora,dora,pissa with packing and a confirmation phase: LoRA and DoRA trials train in packs, the
    PiSSA trial (a base of its own) and every confirmation run alone; all complete with their own folders."""
    dropped = ("lora.rank=", "trainer.max_", "hydra/sweeper/pruner", "hydra.sweeper.pruner", "hydra.sweeper.n_")
    args = [a for a in sweep_args(shared_data, tmp_path, "mixed") if not a.startswith(dropped)]
    run_sweep_py(
        *args, "lora_method=lora,dora,pissa", "trainer.max_steps=2", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pack.size=3", "hydra.sweeper.confirm.seeds=1", "hydra.sweeper.confirm.top_k=3", cwd=tmp_path,
    )  # fmt: skip
    study = optuna.load_study(study_name="mixed", storage=f"sqlite:///{tmp_path / 's.db'}")
    search = {t.params["lora_method"]: t for t in study.trials if confirmation_of(t) is None}
    runs = [t for t in study.trials if confirmation_of(t) is not None]
    assert sorted(search) == ["dora", "lora", "pissa"] and len(runs) == 3
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert "pack_id" in search["lora"].user_attrs and "pack_id" in search["dora"].user_attrs
    assert "pack_id" not in search["pissa"].user_attrs and search["pissa"].user_attrs["peak_memory_own"] is True
    assert sorted(confirmation_of(t)[0] for t in runs) == sorted(t.number for t in search.values())
    for run in runs:  # a confirmation run is never packed: its own job, its own peak memory
        assert "pack_id" not in run.user_attrs and run.user_attrs["phase"] == "confirm"
        assert PACK_ATTR not in run.system_attrs
    dirs = {t.user_attrs["run_dir"] for t in study.trials}
    assert len(dirs) == 6 and all((Path(d) / "metrics.json").is_file() for d in dirs)
