"""The command line does what the user typed: `python sweep.py -m ...` on the tiny model, a real SQLite study.

Each test runs sweep.py as a subprocess (as a user would) with trials of two optimizer steps on the shared SMS
sample, then reads the study with Optuna.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import ROOT, run_sweep_py
from helpers import lean_sweep as lean
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

STUDY = "sms_spam-tiny-lora"


def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 's.db'}"


def load(tmp_path: Path, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage(tmp_path))


def job_config(trial: optuna.trial.FrozenTrial) -> dict:
    return yaml.safe_load((Path(trial.user_attrs["run_dir"]) / ".hydra" / "config.yaml").read_text())


def test_interval_is_a_float_range_and_casts_are_honoured(shared_data, tmp_path):
    run_sweep_py(
        *lean(shared_data, tmp_path), "optim.weight_decay=interval(0,1)", "trainer.max_steps=int(interval(1,2))",
        "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=2", cwd=tmp_path,
    )  # fmt: skip
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        assert trial.distributions == {
            "optim.weight_decay": FloatDistribution(0.0, 1.0),
            "trainer.max_steps": IntDistribution(1, 2),
        }
        decay = trial.params["optim.weight_decay"]
        assert 0 < decay < 1, "interval(0,1) samples between its ends, not only 0 and 1"
        config = job_config(trial)
        assert config["optim"]["weight_decay"] == decay
        assert config["trainer"]["max_steps"] == trial.params["trainer.max_steps"]
        assert isinstance(config["trainer"]["max_steps"], int)


def test_range_under_the_grid_sampler_excludes_its_end_as_hydra_does(shared_data, tmp_path):
    run_sweep_py(
        *lean(shared_data, tmp_path), "trainer.batch_size=range(2,6,2)", "hydra/sweeper/sampler=grid", cwd=tmp_path
    )
    study = load(tmp_path)
    assert sorted(t.params["trainer.batch_size"] for t in study.trials) == [2, 4]
    assert {job_config(t)["trainer"]["batch_size"] for t in study.trials} == {2, 4}


def test_the_removed_motpe_sampler_is_refused_in_one_line_naming_its_replacements(shared_data, tmp_path):
    proc = run_sweep_py(
        *lean(shared_data, tmp_path), "lora.rank=2,4", "hydra/sweeper/sampler=motpe", cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if "MOTPESampler" in ln]
    assert "but got hydra/sweeper/sampler=motpe" in line and "sampler=tpe" in line and "sampler=nsgaii" in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s.db").exists() or not load_all(tmp_path)


def test_a_bad_sweeper_setting_is_the_sweepers_own_line_without_hydras_wrapping(shared_data, tmp_path):
    proc = run_sweep_py(
        *lean(shared_data, tmp_path), "lora.rank=2,4", "hydra.sweeper.n_trials=0", cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: `n_trials` must be a positive integer, but got n_trials=0.", proc.stderr
    assert not (tmp_path / "s.db").exists() or not load_all(tmp_path)


def load_all(tmp_path: Path) -> list:
    return [s for s in optuna.get_all_study_summaries(storage(tmp_path)) if s.n_trials]


def test_a_list_is_its_points_under_tpe_each_runs_once_and_the_sweep_stops(shared_data, tmp_path):
    args = [*lean(shared_data, tmp_path), "lora.rank=2,4,8"]  # the default sampler: TPE
    run_sweep_py(*args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    first = sorted(t.params["lora.rank"] for t in load(tmp_path).trials)
    assert len(first) == 2 and len(set(first)) == 2, "TPE drew a rank twice"
    proc = run_sweep_py(*args, cwd=tmp_path)  # n_trials=20: only the third rank is left
    study = load(tmp_path)
    assert sorted(t.params["lora.rank"] for t in study.trials) == [2, 4, 8]
    assert all(t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs for t in study.trials)
    (line,) = [ln for ln in proc.stdout.splitlines() if "points of the search space" in ln]
    assert line.endswith(
        "All 3 points of the search space (lora.rank: 2,4,8) have run, each once: the sweep stops short of n_trials=20."
    )


def test_a_study_refuses_a_rerun_with_other_fixed_settings_unless_asked_to_extend(shared_data, tmp_path):
    args = [*lean(shared_data, tmp_path), "lora.rank=2,4", "hydra.sweeper.n_trials=1"]
    run_sweep_py(*args, cwd=tmp_path)
    changed = [a.replace("trainer.max_steps=2", "trainer.max_steps=3") for a in args if "n_trials" not in a]
    changed += ["hydra.sweeper.n_trials=2", "optim.weight_decay=0.1"]
    proc = run_sweep_py(*changed, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if "must be run with the settings of its 1 trials" in ln]
    assert "optim.weight_decay=0.1 (the study has it unset); trainer.max_steps=3 (the study has 2)" in line
    assert "hydra.sweeper.study_name=" in line and "hydra.sweeper.extend_study=true" in line
    assert len(load(tmp_path).trials) == 1, "nothing ran, nothing was reused under the new command"

    proc = run_sweep_py(*changed, "hydra.sweeper.extend_study=true", cwd=tmp_path)
    first, added = load(tmp_path).trials
    assert first.user_attrs["trainer.max_steps"] == 2 and added.user_attrs["trainer.max_steps"] == 3
    assert added.state == TrialState.COMPLETE and "duplicate_of" not in added.user_attrs
    assert "extended with other settings" in proc.stdout + proc.stderr
    run_sweep_py(*changed, cwd=tmp_path)  # the new settings are the study's now: the same command resumes

    other_ranks = [a.replace("lora.rank=2,4", "lora.rank=2,4,8") for a in changed]
    proc = run_sweep_py(*other_ranks, "hydra.sweeper.extend_study=true", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "must keep its kind and choices within a study, but got lora.rank=2,4,8 (the study has 2,4" in proc.stderr


def test_a_swept_value_the_config_check_refuses_stops_the_sweep_before_any_trial_trains(shared_data, tmp_path):
    proc = run_sweep_py(*lean(shared_data, tmp_path), "lora.rank=4,0", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if "must pass the app's config check" in ln]
    assert "(sweep.check_trial_config), but got lora.rank=0: `lora.rank > 0` must hold" in line
    assert not (tmp_path / "outputs").exists(), "no trial ran (rank 4 did not train first)"
    assert not load_all(tmp_path)


def test_a_sweep_stopped_by_failures_ends_with_the_last_trials_own_error_and_one_traceback(shared_data, tmp_path):
    # a file that exists (a missing one is refused before the first trial) but cannot be read: every trial fails
    broken = tmp_path / "one_column.tsv"
    broken.write_text("ham\nspam\n")
    args = [a for a in lean(shared_data, tmp_path) if not a.startswith("task.path=")]
    proc = run_sweep_py(*args, f"task.path={broken}", "lora.rank=2,4,8", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2, "3 points, 1 failure allowed: stop at the 2nd"
    reason = study.trials[1].user_attrs["fail_reason"]
    assert str(broken) in reason
    (line,) = [ln for ln in proc.stderr.splitlines() if "The sweep stopped early" in ln]
    assert f"Last failure, trial 1: {reason}" in line
    output = proc.stdout + proc.stderr
    assert output.count("Traceback (most recent call last)") == 1, "the same failure twice: one traceback"
    assert "trial 1 FAIL: " in output and "(as trial 0: traceback above)" in output


def test_the_closing_commands_use_the_interpreter_that_ran_the_sweep(shared_data, tmp_path):
    # run from the project folder, as the README does: a venv inside it is shown relative (.venv/bin/python)
    proc = run_sweep_py(*lean(shared_data, tmp_path), "lora.rank=2", cwd=ROOT)
    python = Path(sys.executable)
    inside = python.is_relative_to(ROOT)
    shown = str(python.relative_to(ROOT)) if inside else str(python)
    dashboard = python.parent / "optuna-dashboard"
    shown_dashboard = str(dashboard.relative_to(ROOT)) if inside else str(dashboard)
    db = storage(tmp_path)
    assert f"    {shown} -m analysis.report --storage {db} --study {STUDY}\n" in proc.stdout
    assert f"    {shown_dashboard} {db}\n" in proc.stdout
    assert not (ROOT / "outputs").exists() or not any((ROOT / "outputs").glob(f"sweeps/{STUDY}"))
