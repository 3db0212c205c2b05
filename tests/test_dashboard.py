"""optuna-dashboard serves our studies: start it as a user would, read its JSON API over HTTP, stop it by PID."""

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
def dashboard(storage: str, log: Path) -> Iterator[str]:
    """`optuna-dashboard <storage>` on 127.0.0.1 and a free port; yields its base URL once it answers."""
    port = _free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [_dashboard_command(), "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref", storage],
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


def test_dashboard_serves_study_trials_and_user_attributes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    study = optuna.create_study(study_name="sms_spam-tiny", storage=storage, direction="maximize")
    study.set_metric_names(["accuracy"])
    dists = {"finetune": CategoricalDistribution(["full", "lora"]), "lora.rank": CategoricalDistribution([2, 4])}
    for finetune, rank, accuracy in [("full", 2, 0.8), ("lora", 2, 0.81), ("lora", 4, 0.82)]:
        study.enqueue_trial({"finetune": finetune, "lora.rank": rank})
        trial = study.ask(dists)
        metrics = {"task": "sms_spam", "finetune": finetune, "lora_rank": rank, "val_accuracy": accuracy}
        for name, value in metrics.items():
            trial.set_user_attr(name, value)
        trial.report(0.7, 10)
        study.tell(trial, accuracy)
    failed = study.ask(dists)
    failed.set_user_attr("fail_reason", "NonFiniteLossError: loss is nan at step 3")
    study.tell(failed, state=TrialState.FAIL)

    with dashboard(storage, tmp_path / "dashboard.log") as base:
        detail = read_study(base, "sms_spam-tiny")

    assert detail["name"] == "sms_spam-tiny" and detail["directions"] == ["maximize"]
    assert detail["objective_names"] == ["accuracy"]
    assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete", "Complete", "Fail"]
    expected = {"task": "sms_spam", "finetune": "lora", "lora_rank": "4", "val_accuracy": "0.82"}
    assert attrs(detail["trials"][2]) == expected
    assert attrs(detail["trials"][3])["fail_reason"].startswith("NonFiniteLossError")
    assert {a["key"] for a in detail["union_user_attrs"]} >= {"task", "finetune", "lora_rank", "val_accuracy"}
    assert detail["has_intermediate_values"] is True
    assert {p["name"] for p in detail["trials"][0]["params"]} == {"finetune", "lora.rank"}
    assert detail["best_trials"][0]["number"] == 2
