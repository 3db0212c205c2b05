"""The bench scripts still run end to end (tiny model, a step or two) and write their JSON lines; no timings checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, json_file: Path, timeout: float = 180) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args, "--threads", "1", "--json", str(json_file)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=json_file.parent,
    )
    if proc.returncode != 0:
        pytest.fail(f"bench/{script} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    assert "|" in proc.stdout  # the table
    return [json.loads(line) for line in json_file.read_text().splitlines()]


def test_train_step_bench_runs_both_sides(tmp_path: Path) -> None:
    records = run_bench(
        "train_step.py",
        *("--size", "tiny", "--case", "alpaca", "--mode", "lora", "--alpaca-batches", "1"),
        *("--steps", "1", "--warmup", "0", "--reps", "1"),
        json_file=tmp_path / "train.jsonl",
    )
    (r,) = records
    assert (r["case"], r["mode"]) == ("alpaca", "lora") and r["speedup"] > 0 and set(r["median"]) == {"ours", "peer"}
    assert all(m["peak_rss_mb"] > 0 for m in r["median"].values())


def test_generate_bench_gives_the_same_tokens_as_transformers(tmp_path: Path) -> None:
    records = run_bench(
        "generate.py",
        *("--size", "tiny", "--case", "batched", "--new-tokens", "6", "--prompts", "5", "--reps", "1", "--inner", "1"),
        json_file=tmp_path / "generate.jsonl",
    )
    (r,) = records
    assert r["case"] == "batched" and r["same_tokens"]


def test_sweep_overhead_bench_times_every_part(tmp_path: Path) -> None:
    (record,) = run_bench("sweep_overhead.py", "--size", "tiny", "--trials", "2", json_file=tmp_path / "o.jsonl")
    assert len(record["trials"]) == 2
    assert set(record["trials"][0]) == {"study", "compose", "data", "model", "total"}


def test_pruning_bench_compares_pruned_and_unpruned_studies(tmp_path: Path) -> None:
    (record,) = run_bench(
        "pruning.py",
        *("--trials", "1", "--seeds", "0", "--max-steps", "2", "--eval-every", "1"),
        json_file=tmp_path / "p.jsonl",
    )
    assert [s["pruner"] for s in record["studies"]] == ["none", "median"]
    assert all(s["trials"] == 1 and s["steps"] == 2 for s in record["studies"])
