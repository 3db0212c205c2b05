"""optuna-dashboard shows our studies and the report's answer: start it as a user would (with the artifact folder the
report wrote), read its JSON API and artifact routes over HTTP, stop it by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from optuna_dashboard import get_note, save_note

from analysis.dashboard import NOTE_START, default_artifact_dir
from analysis.report import main

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _dashboard_command() -> str:
    beside = Path(sys.executable).parent / "optuna-dashboard"
    found = str(beside) if beside.exists() else shutil.which("optuna-dashboard")
    assert found, "optuna-dashboard must be installed with the project"
    return found


@contextmanager
def dashboard(storage: str, log: Path, artifact_dir: Path | None = None) -> Iterator[str]:
    """`optuna-dashboard <storage> [--artifact-dir DIR]` on 127.0.0.1 and a free port; yields its base URL."""
    port = _free_port()
    extra = ["--artifact-dir", str(artifact_dir)] if artifact_dir is not None else []
    with log.open("w") as out:
        process = subprocess.Popen(
            [_dashboard_command(), "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref", *extra, storage],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/api/studies")
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, f"optuna-dashboard exited: {log.read_text()}"
                assert time.monotonic() < deadline, f"optuna-dashboard did not answer: {log.read_text()}"
                time.sleep(0.2)
        yield base
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def read_study(base: str, name: str) -> dict:
    """The dashboard's view of one study: find its id in the list, then fetch its detail."""
    studies = _get(f"{base}/api/studies")["study_summaries"]
    ids = {s["study_name"]: s["study_id"] for s in studies}
    assert name in ids, f"study {name} not served; the dashboard lists {sorted(ids)}"
    return _get(f"{base}/api/studies/{ids[name]}")


def attrs(trial: dict) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _write_run(folder: Path, finetune: str, steps: int, alpaca: bool = False) -> Path:
    """A run folder as the trainer leaves it: metrics.json with its data block and curves (+ generations)."""
    folder.mkdir(parents=True)
    data = {"splits": {"train": {"rows": 400, "class_counts": {"ham": 340, "spam": 60}},
                       "val": {"rows": 100, "class_counts": {"ham": 87, "spam": 13}}}}  # fmt: skip
    curve = [{"step": s, "loss": 1.0 / s, "lr": 1e-4} for s in range(1, steps + 1)]
    (folder / "metrics.json").write_text(json.dumps({"finetune": finetune, "data": data, "train_curve": curve}))
    if alpaca:
        rows = [{"instruction": f"say {i}", "response": str(i)} for i in range(30)]
        (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def build_sms_study(tmp_path: Path) -> str:
    """A full vs LoRA (ranks 2 and 4) study as the sweeper records it, with run folders on this machine."""
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    study = optuna.create_study(study_name="sms_spam-tiny", storage=storage, direction="maximize")
    study.set_metric_names(["accuracy"])
    dists = {"finetune": CategoricalDistribution(["full", "lora"]), "lora.rank": CategoricalDistribution([2, 4])}
    for i, (finetune, rank, accuracy) in enumerate([("full", 2, 0.95), ("lora", 2, 0.93), ("lora", 4, 0.945)]):
        study.enqueue_trial({"finetune": finetune, "lora.rank": rank})
        trial = study.ask(dists)
        run = _write_run(tmp_path / "runs" / f"trial_{i}", finetune, steps=12, alpaca=i == 2)
        metrics = {
            "task": "sms_spam", "model": "tiny", "finetune": finetune, "val_accuracy": accuracy, "steps": 12,
            "lora_rank": rank if finetune == "lora" else None, "batch_size": 8, "grad_accum": 1,
            "trainable_params": 3_382_208 if finetune == "full" else 2_112 * rank, "total_params": 3_400_000,
            "peak_memory_mb": 600.0 if finetune == "full" else 540.0, "run_dir": str(run),
            "train_time_s": 5.0 if finetune == "full" else 3.0,
        }  # fmt: skip
        for name, value in metrics.items():
            trial.set_user_attr(name, value)
        trial.report(0.7, 10)
        study.tell(trial, accuracy)
    failed = study.ask(dists)
    failed.set_user_attr("fail_reason", "NonFiniteLossError: loss is nan at step 3")
    study.tell(failed, state=TrialState.FAIL)
    return storage


def test_dashboard_shows_the_reports_answer_figures_and_trial_files(tmp_path):
    storage = build_sms_study(tmp_path)
    written = main(["--storage", storage, "--out", str(tmp_path / "report"), "--quiet"])
    store = tmp_path / "sweeps-artifacts"  # the default: beside the SQLite file
    md = written["markdown"].read_text()
    verdict = next(line for line in md.splitlines() if line.startswith("- **sms_spam · tiny: "))

    with dashboard(storage, tmp_path / "dashboard.log", artifact_dir=store) as base:
        detail = read_study(base, "sms_spam-tiny")
        study_id = next(s["study_id"] for s in _get(f"{base}/api/studies")["study_summaries"])
        study_files = {
            a["filename"]: _fetch(f"{base}/artifacts/{study_id}/{a['artifact_id']}") for a in detail["artifacts"]
        }
        trial_files = [
            {
                a["filename"]: _fetch(f"{base}/artifacts/{study_id}/{t['trial_id']}/{a['artifact_id']}")
                for a in t["artifacts"]
            }
            for t in detail["trials"]
        ]

    # the study page: the verdict as a user attribute, the same verdict and table in the note
    assert verdict in detail["note"]["body"]
    assert "| sms_spam | tiny | accuracy 0.945 / 0.950 |" in detail["note"]["body"]
    answers = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert answers["answer: sms_spam · tiny"].startswith("matches: LoRA r=4 matches full fine-tuning: accuracy 0.945")
    # the study's artifacts: the self-contained report and every figure the report drew
    assert study_files["report.html"] == written["html"].read_bytes()
    for figure in written["figures"]:
        assert study_files[figure.name] == figure.read_bytes()
    # each trial's files: metrics.json as written, its training curve, alpaca's generation sample
    for i, files in enumerate(trial_files[:3]):
        assert files["metrics.json"] == (tmp_path / "runs" / f"trial_{i}" / "metrics.json").read_bytes()
        assert files["train_curve.png"].startswith(b"\x89PNG")
    sample = trial_files[2]["generations_sample.jsonl"].decode().splitlines()
    assert [json.loads(line)["response"] for line in sample] == [str(i) for i in range(20)]
    assert trial_files[3] == {}  # the failed trial has no run folder


def test_running_the_report_again_replaces_and_keeps_the_users_note(tmp_path):
    storage = build_sms_study(tmp_path)
    store = tmp_path / "elsewhere"
    main(["--storage", storage, "--out", str(tmp_path / "r1"), "--quiet", "--artifacts", str(store)])
    study = optuna.load_study(study_name="sms_spam-tiny", storage=storage)
    save_note(study, get_note(study) + "\n\nMy own remark: rerun with 3 seeds.")
    before = sorted(p.name for p in store.iterdir())
    main(["--storage", storage, "--out", str(tmp_path / "r2"), "--quiet", "--artifacts", str(store)])
    assert sorted(p.name for p in store.iterdir()) == before  # same artifact ids, contents replaced
    note = get_note(study)
    assert note.count(NOTE_START) == 1 and note.count("## LoRA vs full fine-tuning: the answer") == 1
    assert note.endswith("My own remark: rerun with 3 seeds.")
    attrs = study._storage.get_study_system_attrs(study._study_id)
    live = [v for k, v in attrs.items() if k.startswith(("artifacts:", "dashboard:artifacts:"))]
    assert sum(v != "null" for v in live) == len(before)


def test_no_dashboard_leaves_the_study_untouched_and_the_command_names_the_artifact_folder(tmp_path, capsys):
    storage = build_sms_study(tmp_path)
    main(["--storage", storage, "--out", str(tmp_path / "r"), "--quiet", "--no-dashboard"])
    study = optuna.load_study(study_name="sms_spam-tiny", storage=storage)
    assert get_note(study) == "" and not study.user_attrs and not (tmp_path / "sweeps-artifacts").exists()
    main(["--storage", storage, "--out", str(tmp_path / "r"), "--quiet"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"  optuna-dashboard {storage} --artifact-dir {tmp_path / 'sweeps-artifacts'}"


def test_artifact_folder_beside_the_database():
    assert default_artifact_dir("sqlite:///runs/sweeps.db") == Path("runs/sweeps-artifacts")
    assert default_artifact_dir("runs/journal.log") == Path("runs/journal-artifacts")
    assert default_artifact_dir("postgresql+psycopg://u@db/sweeps") is None
