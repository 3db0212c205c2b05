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
