"""`python -m tasks.inspect`: the report users read before a sweep, and one-line errors on bad data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.inspect import main

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_classification_report(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = shared_data / "sms_spam" / "SMSSpamCollection"
    code, out, err = run(["task=sms_spam", f"task.path={sample}", "model=tiny"], capsys)
    assert code == 0, err
    assert "task sms_spam (classification, classes: ham, spam)" in out
    assert "dropped before splitting: empty_text=0" in out
    assert re.search(r"split\s+rows\s+ham\s+spam\s+len p50\s+len p90\s+len p99\s+len max\s+truncated", out)
    assert re.search(r"train\s+3902\s+3379\s+523\s", out)
    assert re.search(r"test\s+1115\s+966\s+149\s", out)
    assert "example: train row 0, label 'ham'" in out or "example: train row 0, label 'spam'" in out


def test_alpaca_report(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = shared_data / "alpaca" / "alpaca_sample.json"
    argv = ["task=alpaca", f"task.path={sample}", "task.train_size=500", "task.val_size=100", "model=tiny"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "empty_output=2, output_512_chars_or_more=873" in out
    assert re.search(r"test\s+100\s+50\s+50\s", out)  # half with an input, half without
    assert re.search(r"train\s+500\s", out)
    assert "### Response:" in out and "--- response (loss) ---" in out and "<|endoftext|>" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["task=alpaca", "task.path={alpaca}"], r"^error: train_size \+ val_size \+ test_size must fit .*lower task"),
        (["task=sms_spam", "task.path=/nonexistent/file"], r"^error: task sms_spam: task.path must be an existing"),
        (
            ["task=imdb"],
            r"^error: task must be one of ag_news, alpaca, sms_spam, sst2, text_classification, but got task=imdb",
        ),
        (["task=sst2", "task.truncation_side=up"], r"truncation_side must be one of right, left"),
        (["task=sst2", "task.max_lenght=64"], r"^error: .*, but got task.max_lenght=64 \(did you mean task.max_length"),
        (["task=sst2", "+trainer.lr=1"], r"^error: every key .*, but got trainer.lr=1 \(did you mean optim.lr\?\)$"),
    ],
)
def test_bad_input_exits_1_with_one_line(
    shared_data: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    alpaca = shared_data / "alpaca" / "alpaca_sample.json"
    code, out, err = run([a.format(alpaca=alpaca) for a in argv], capsys)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err.strip())


def test_as_a_command(shared_data: Path) -> None:
    """The way users run it: a fresh process composing conf/ from the repository."""
    sample = shared_data / "ag_news" / "test.csv"
    cmd = [sys.executable, "-m", "tasks.inspect", "task=ag_news", f"task.path={sample}", "task.val_size=400"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(r"test\s+760\s+190\s+190\s+190\s+190\s", done.stdout)
    assert re.search(r"val\s+400\s+100\s+100\s+100\s+100\s", done.stdout)
    bad = subprocess.run([*cmd, "task.val_size=9000"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "lower task.train_size" in bad.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml")))
def test_every_task_config_matches_its_task(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """conf/task/<name>.yaml composes and names exactly the settings its task knows (no drift, no typos)."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from tasks import get_task
    from tasks.inspect import compose

    cfg = compose([f"task={name}"])
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    if name == "text_classification":
        task_cfg["path"] = "."  # it has no default data
    task = get_task(task_cfg)
    assert set(task_cfg) == {f.name for f in fields(OmegaConf.get_type(cfg.task))} == set(task.settings)
    assert cfg.direction == ("minimize" if name == "alpaca" else "maximize")
    assert "ignores unknown settings" not in caplog.text
