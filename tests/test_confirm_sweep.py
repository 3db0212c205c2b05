"""Confirmation end to end with the real trainer (issue [12] items 1-3): `python sweep.py -m ...` runs the search, then
trains the chosen configurations again with fresh seeds, and the report states intervals and verdicts; an alpaca
sweep that optimises the judge (loopback fake Gemini) sends no test prompt to the judge until the confirmation phase.

Kept small: the tiny random GPT-2, a few steps, small splits. The sweeper's own behaviour (reruns, several workers,
samplers) is tested faster on the toy app in tests/test_sweeper_confirm.py.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from fake_gemini import FakeGemini
from helpers import run_sweep_py
from test_search_confirm import KEY, _judged_outputs, _splits

from analysis import answer, stats, wording
from analysis.report import main
from sweeper._phase import confirmation_of

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def sweep(folder: Path, *args: str) -> optuna.Study:
    storage = f"sqlite:///{folder / 'sweeps.db'}"
    run_sweep_py(
        "-m", "model=tiny", "trainer.max_steps=3", "trainer.save_checkpoint=false", *args,
        f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=confirm", f"hydra.sweep.dir={folder / 'sweep'}",
        f"paths.root_dir={folder}", cwd=folder, timeout=600,
    )  # fmt: skip
    return optuna.load_study(study_name="confirm", storage=storage)


def test_a_tiny_full_vs_lora_sweep_is_confirmed_with_seeds_and_the_report_gives_intervals(shared_data, tmp_path):
    study = sweep(
        tmp_path, "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "task.val_size=48", "task.test_size=48", "trainer.batch_size=8", "finetune=full,lora",
        "hydra/sweeper/sampler=grid", "hydra.sweeper.confirm.seeds=2",
    )  # fmt: skip
    search = [t for t in study.trials if confirmation_of(t) is None]
    runs = {confirmation_of(t): t for t in study.trials if confirmation_of(t) is not None}
    assert len(search) == 2 and {t.params["finetune"] for t in search} == {"full", "lora"}
    assert sorted(runs) == sorted((t.number, seed) for t in search for seed in (1000, 1001))
    for (number, seed), run in runs.items():
        assert run.state == optuna.trial.TrialState.COMPLETE and run.params == study.trials[number].params
        assert (run.user_attrs["phase"], run.user_attrs["confirms"], run.user_attrs["seed"]) == (
            "confirm",
            number,
            seed,
        )
        assert run.user_attrs["test_accuracy"] is not None and run.value == run.user_attrs["val_accuracy"]
    assert all(t.user_attrs["seed"] == 42 and t.user_attrs["phase"] == "search" for t in search)

    written = main(["--storage", f"sqlite:///{tmp_path / 'sweeps.db'}", "--out", str(tmp_path / "r"), "--quiet",
                    "--no-dashboard"])  # fmt: skip
    (verdict,) = written["sections"].verdicts
    assert verdict.confirmed and verdict.lora.n == verdict.full.n == 2
    lora_runs = [runs[(n, s)].value for n, s in sorted(runs) if study.trials[n].params["finetune"] == "lora"]
    assert verdict.lora.values == tuple(lora_runs)
    first = written["markdown"].read_text().split("\n## ", 1)[0]
    assert "Seeds: LoRA 2, full 2; 95% intervals." in first and answer.SINGLE_RUNS not in first
    interval = stats.welch_interval(verdict.lora.values, verdict.full.values)
    assert f"95% CI {answer._amount(verdict, interval.low, signed=True)}" in first
    assert f"± {wording.number(verdict.lora.interval.half_width, 2)}" in first


def test_a_judge_search_sends_no_test_prompt_until_its_confirmation_run(
    shared_data, tmp_path, monkeypatch, compose_cfg
):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    alpaca = [
        "task=alpaca", f"task.path={shared_data / 'alpaca' / 'alpaca_sample.json'}", "task.train_size=200",
        "task.val_size=40", "task.test_size=6", "task.val_generate_size=6", "task.max_length=128",
        "trainer.batch_size=4", "judge.generation.max_new_tokens=4", "judge.cache=false", "judge.retry.max_attempts=1",
        "objective=judge",
    ]  # fmt: skip
    data, subset = _splits(compose_cfg(*alpaca))
    val, test = {r["output"] for r in subset}, {r["output"] for r in data.test_records}
    with FakeGemini() as server:
        study = sweep(
            tmp_path, *alpaca, f"judge.base_url={server.base_url}", "finetune=lora", "hydra.sweeper.n_trials=1",
            "hydra.sweeper.confirm.seeds=1",
        )  # fmt: skip
        sent = _judged_outputs(server)
    search, run = study.trials
    assert confirmation_of(run) == (search.number, 1000)
    assert sorted(sent[:6]) == sorted(val), "the search trial: the validation subset only"
    assert sorted(sent[6:]) == sorted([*val, *test]), "its confirmation run: validation and test prompts"
    assert "test_judge_mean" not in search.user_attrs and search.value == search.user_attrs["val_judge_mean"]
    assert run.user_attrs["test_judge_mean"] == 85 and run.user_attrs["test_judge_n_scored"] == len(test)
