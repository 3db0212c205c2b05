"""The report and the dashboard on a study made by a real sweep: `python sweep.py -m ...` in a subprocess.

A grid over fine-tuning mode and LoRA rank on the tiny model and the SMS sample: four trials, a few steps each.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import optuna
import pandas as pd
import pytest
from helpers import run_sweep_py
from test_dashboard import attrs, dashboard, read_study

from analysis.report import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
STUDY = "sms-tiny"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> str:
    """The storage URL of a finished 4-trial grid sweep (full, lora) x (rank 2, 4)."""
    folder = tmp_path_factory.mktemp("real_sweep")
    storage = f"sqlite:///{folder / 'sweeps.db'}"
    run_sweep_py(
        "-m",
        "model=tiny",
        "task=sms_spam",
        f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "trainer.batch_size=8",
        "finetune=full,lora",
        "lora.rank=2,4",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=4",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={STUDY}",
        f"hydra.sweep.dir={folder / 'sweep'}",
        f"paths.root_dir={folder}",
        cwd=folder,
        timeout=600,
    )
    return storage


def test_report_of_a_real_sweep_compares_both_modes_with_a_rank_plot(swept, tmp_path):
    written = main(["--storage", swept, "--out", str(tmp_path / "report"), "--quiet"])
    md = written["markdown"].read_text()
    comparison = md.split("## Full fine-tuning vs LoRA, per task", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in comparison.splitlines() if line.startswith(f"| {STUDY}#")]
    assert {row.split(" | ")[4] for row in rows} == {"full", "lora"}
    assert re.search(r"- sms_spam \(tiny\): LoRA r=[24] reaches [0-9.]+% of full fine-tuning's accuracy", md)
    assert "figures/knob_lora_rank.png" in md
    referenced = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert referenced and len(referenced) == len(written["figures"])
    for relative in referenced:
        assert matplotlib.image.imread(written["markdown"].parent / relative).ndim == 3
    assert written["html"].read_text().count("data:image/png;base64,") == len(referenced)
    # the exported frame holds the sweep's metrics under their metrics.json names
    frame = pd.read_parquet(written["markdown"].parent / "trials.parquet")
    assert len(frame) == 4 and frame["state"].eq("COMPLETE").all()
    assert frame["val_accuracy"].notna().all() and frame["trainable_params"].gt(0).all()
    assert frame.loc[frame["finetune"] == "full", "lora_rank"].isna().all()


def test_dashboard_serves_the_real_sweep(swept, tmp_path):
    study = optuna.load_study(study_name=STUDY, storage=swept)
    with dashboard(swept, tmp_path / "dashboard.log") as base:
        detail = read_study(base, STUDY)
    assert detail["name"] == STUDY and detail["directions"] == ["maximize"]
    assert detail["objective_names"] == study.metric_names == ["accuracy"]
    assert len(detail["trials"]) == 4 and {t["state"] for t in detail["trials"]} == {"Complete"}
    for served, trial in zip(detail["trials"], study.trials, strict=True):
        served_attrs = attrs(served)
        for key in ("val_accuracy", "trainable_params", "peak_memory_mb", "finetune", "task", "run_dir"):
            assert served_attrs[key] == str(trial.user_attrs[key])
        assert {p["name"] for p in served["params"]} >= {"finetune", "lora.rank"}
    assert detail["has_intermediate_values"] is True
