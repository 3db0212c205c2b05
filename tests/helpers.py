"""Helpers for tests that run the project the way a user does (subprocesses of sweep.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_sweep_py(*args: str, cwd: Path | None = None, timeout: float = 300, check: bool = True):
    """Run `python sweep.py ARGS` as a user would; fail the test with its output when it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"sweep.py {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def lean_sweep(shared_data: Path, tmp_path: Path) -> list[str]:
    """`-m` and a tiny-model SMS trial of two steps on a few rows (seconds each), its study in tmp_path/s.db."""
    return [
        "-m", "model=tiny", "task=sms_spam", f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}",
        "task.max_length=32", "task.val_size=0.02", "task.test_size=0.01", "trainer.max_steps=2",
        "trainer.batch_size=4", "trainer.eval_batch_size=32", "trainer.max_eval_batches=1",
        "trainer.save_checkpoint=false", f"paths.root_dir={tmp_path}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}",
    ]  # fmt: skip
