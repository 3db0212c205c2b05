"""The report and the dashboard on a study made by a real sweep: `python sweep.py -m ...` in a subprocess.

A grid over fine-tuning mode and LoRA rank on the tiny model and the SMS sample: four trials, a few steps each (the
two full fine-tuning points are one configuration: the second reuses the first's result).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import matplotlib.image
import optuna
import pandas as pd
import pytest
from browser import chromium
from helpers import run_sweep_py
from test_dashboard import attrs, dashboard, read_study
from test_report_browser import measure, require_chromium

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


def test_report_of_a_real_sweep_states_the_answer_first(swept, tmp_path):
    written = main(["--storage", swept, "--out", str(tmp_path / "report"), "--quiet", "--no-dashboard"])
    md = written["markdown"].read_text()
    first = md.split("\n## ", 1)[0]  # everything before the first section heading
    assert re.search(r"- \*\*sms_spam · tiny: (matches|better|worse)\.\*\* LoRA r=[24] ", first)
    assert "Single runs, not confirmed with seeds." in first and "### What LoRA saves" in first
    assert "From 4 trials in 1 study (sms-tiny): 3 complete, 1 reused a finished twin's result (counted once)." in md
    frame = pd.read_parquet(written["markdown"].parent / "trials.parquet")
    assert len(frame) == 4 and frame["state"].eq("COMPLETE").all()
    assert frame["val_accuracy"].notna().all() and frame["trainable_params"].gt(0).all()
    assert frame.loc[frame["finetune"] == "full", "lora_rank"].isna().all()
    # 4 steps of 8 rows: the fraction of the training split seen, from the run folder's data block
    metrics = json.loads((Path(frame["run_dir"].iloc[0]) / "metrics.json").read_text())
    rows = metrics["data"]["splits"]["train"]["rows"]
    assert frame["epochs_trained"].tolist() == pytest.approx([4 / math.ceil(rows / 8)] * 4)
    assert frame["baseline_value"].notna().all()  # the majority class, from the class counts
    referenced = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert "figures/answer_sms_spam_accuracy.png" in referenced and len(referenced) == len(written["figures"])
    for relative in referenced:
        assert matplotlib.image.imread(written["markdown"].parent / relative).ndim == 3
    assert written["html"].read_text().count("data:image/png;base64,") == len(referenced)


def test_first_screen_and_the_dashboard_study_page_state_the_same_answer(swept, tmp_path):
    """The done-when of the report: report.html's first screen and the dashboard's study page, in a browser."""
    require_chromium()
    written = main(["--storage", swept, "--out", str(tmp_path / "report"), "--quiet"])
    outcome = next(line for line in written["markdown"].read_text().splitlines() if line.startswith("- **sms_spam"))
    outcome = outcome.split(": ", 1)[1].split(".**", 1)[0]  # matches / better / worse
    store = Path(swept.removeprefix("sqlite:///")).with_name("sweeps-artifacts")
    with chromium() as page:
        seen = measure(page, written["html"], tmp_path / "report_first_screen.png")
        assert seen["scrollWidth"] <= seen["innerWidth"] and seen["broken"] == []
        (verdict,) = seen["verdicts"]
        assert verdict["bottom"] <= seen["innerHeight"] and seen["saves"]["bottom"] <= seen["innerHeight"]
        assert verdict["text"].startswith(f"sms_spam · tiny {outcome.upper()}")
        with dashboard(swept, tmp_path / "dashboard.log", artifact_dir=store) as base:
            study_id = read_study(base, STUDY)["trials"][0]["study_id"]
            page.open(f"{base}/dashboard/studies/{study_id}", 1280, 800)
            study_page = wait_for_text(page, "answer: sms_spam · tiny")
            page.open(f"{base}/dashboard/studies/{study_id}/note", 1280, 800)
            note_page = wait_for_text(page, "What LoRA saves")
    assert f"{outcome}: LoRA r=" in study_page and "report.html" in study_page  # the answer and the artifacts
    assert verdict["text"].split("\n")[1] in note_page  # the report's verdict sentence, word for word


def wait_for_text(page, text: str, timeout: float = 30.0) -> str:
    """The page's text once `text` appears in it (the dashboard renders after its API calls return)."""
    deadline = time.monotonic() + timeout
    while True:
        body = page.evaluate("document.body.innerText")
        if text in body or time.monotonic() > deadline:
            assert text in body, f"{text!r} not on the page: {body[:2000]}"
            return body
        time.sleep(0.3)


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
