"""A finished twin's result is reused only for the same config on the same data, by default with the same code.

Trials run in-process against a real Optuna study (sqlite), found by the job the way a sweep's job finds it
(`LORASWEEP_STUDY_NAME`, `LORASWEEP_TRIAL_NUMBER`, the composed `hydra.sweeper.storage`).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tasks.config.checks import ConfigError, check_config
from tasks.train.trial import run_trial


@pytest.fixture
def sms_copy(tmp_path: Path, shared_data: Path) -> Path:
    path = tmp_path / "data" / "SMSSpamCollection"
    path.parent.mkdir()
    path.write_bytes((shared_data / "sms_spam" / "SMSSpamCollection").read_bytes())
    return path


@pytest.fixture
def studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`studies(name)` creates a study and returns `run(compose_cfg, *overrides)`: one trial of it under a job's
    environment, giving its metrics.json content and its frozen trial."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def make(name: str):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")

        def run(compose_cfg, *overrides: str):
            trial = study.ask()
            monkeypatch.setenv("LORASWEEP_STUDY_NAME", name)
            monkeypatch.setenv("LORASWEEP_TRIAL_NUMBER", str(trial.number))
            cfg = compose_cfg(f"hydra.sweeper.storage={storage}", *overrides)
            result = run_trial(cfg, run_dir=tmp_path / f"{name}-{trial.number}")
            study.tell(trial, result["objective"]["value"])
            return result, study.trials[trial.number]

        run.study = study
        return run

    return make


def sms_args(path: Path) -> list[str]:
    return [
        "model=tiny", "task=sms_spam", f"task.path={path}", "finetune=full", "trainer.max_steps=2",
        "trainer.batch_size=4", "task.max_length=32", "trainer.save_checkpoint=false", "trainer.device=cpu",
    ]  # fmt: skip


def test_a_changed_data_file_trains_again_and_the_same_data_is_reused(compose_cfg, sms_copy, studies):
    run = studies("data")
    first, _ = run(compose_cfg, *sms_args(sms_copy))
    assert first["status"] == "complete"

    lines = sms_copy.read_text(encoding="utf-8").splitlines(keepends=True)
    sms_copy.write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")  # the file lost half its rows
    second, trial = run(compose_cfg, *sms_args(sms_copy))
    assert second["status"] == "complete" and "duplicate_of" not in trial.user_attrs
    assert second["config_fingerprint"] != first["config_fingerprint"]
    assert first["data"]["data_fingerprint"] != second["data"]["data_fingerprint"]

    third, trial = run(compose_cfg, *sms_args(sms_copy))  # nothing changed since the second
    assert third["status"] == "duplicate" and trial.user_attrs["duplicate_of"] == 1
    assert trial.value == second["objective"]["value"]


def test_reuse_across_code_versions_only_when_asked(compose_cfg, sms_copy, studies):
    """A twin recorded by another version of the code is reused under trainer.reuse=any_version only."""
    from tasks.train.reuse import result_fingerprint

    reference, recorded = studies("reference")(compose_cfg, *sms_args(sms_copy))
    assert reference["result_fingerprint"] == result_fingerprint(
        reference["config_fingerprint"], reference["code_version"]
    )
    # a study holding the same config on the same data, as another code version recorded it (on another machine)
    run = studies("versions")
    old_version = "0123456789ab"
    attrs = {k: v for k, v in recorded.user_attrs.items() if k != "run_dir"}
    attrs.update(
        code_version=old_version, result_fingerprint=result_fingerprint(attrs["config_fingerprint"], old_version)
    )
    run.study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=attrs))

    same, trial = run(compose_cfg, *sms_args(sms_copy))  # the default: trainer.reuse=same_version
    assert same["status"] == "complete" and "duplicate_of" not in trial.user_attrs
    assert same["config_fingerprint"] == attrs["config_fingerprint"]

    across, trial = run(compose_cfg, *sms_args(sms_copy), "trainer.reuse=any_version")
    assert across["status"] == "duplicate" and trial.user_attrs["duplicate_of"] == 0 and trial.value == 0.5
    assert across["code_version"] == old_version  # the reused result says which code computed it

    off, trial = run(compose_cfg, *sms_args(sms_copy), "trainer.reuse=off")  # trial 1 is a same-version twin
    assert off["status"] == "complete" and "duplicate_of" not in trial.user_attrs


def test_reuse_must_be_a_known_mode(compose_cfg):
    with pytest.raises(ConfigError, match=r"trainer\.reuse must be one of same_version, any_version, off, but got"):
        check_config(compose_cfg("model=tiny", "trainer.reuse=always"))
