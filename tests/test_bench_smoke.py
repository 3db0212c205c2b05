"""The bench scripts still run end to end (tiny model, a step or two) and write their JSON lines; no timings checked."""

from __future__ import annotations

import json
import math
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


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_train_step_bench_times_both_sides_computing_the_same_loss(tmp_path: Path, mode: str) -> None:
    records = run_bench(
        "train_step.py",
        *("--size", "tiny", "--case", "alpaca", "--mode", mode, "--alpaca-batches", "1"),
        *("--steps", "1", "--warmup", "0", "--reps", "1"),
        json_file=tmp_path / "train.jsonl",
    )
    (r,) = records
    assert (r["case"], r["mode"]) == ("alpaca", mode) and set(r["median"]) == {"ours", "peer"}
    # the same weights and batch: the same first loss on both sides (prompt masked, labels shifted, mean per
    # target; a prompt counted as target moves it by ~1e-2), near ln(vocab) for random weights
    ours, peer = r["first_loss"]["ours"], r["first_loss"]["peer"]
    assert r["same_loss"] and ours == pytest.approx(peer, abs=1e-4)
    assert ours == pytest.approx(math.log(50257), abs=0.05)
    # the speed-up is the ratio of the two sides' medians, from measured times
    med = r["median"]
    assert r["speedup"] == pytest.approx(med["ours"]["tokens_per_s"] / med["peer"]["tokens_per_s"])
    assert all(m["step_s"] > 0 and 0 < m["mfu"] < 1 and m["peak_rss_mb"] > 100 for m in med.values())


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


def test_pruning_bench_prunes_and_cannot_beat_the_unpruned_study(tmp_path: Path) -> None:
    trials, max_steps = 4, 3
    (record,) = run_bench(
        "pruning.py",
        *("--trials", str(trials), "--seeds", "0", "--max-steps", str(max_steps), "--eval-every", "1"),
        *("--startup", "1", "--warmup-steps", "0"),
        json_file=tmp_path / "p.jsonl",
        timeout=400,
    )
    unpruned, pruned = record["studies"]
    assert (unpruned["pruner"], pruned["pruner"]) == ("none", "median")
    assert unpruned["trials"] == pruned["trials"] == trials
    # without a pruner every trial runs every step; with it, some stop early and none fails
    assert (unpruned["pruned"], unpruned["complete"], unpruned["steps"]) == (0, trials, trials * max_steps)
    assert pruned["pruned"] >= 1 and pruned["pruned"] + pruned["complete"] == trials
    assert pruned["complete"] * max_steps + pruned["pruned"] <= pruned["steps"]
    assert pruned["steps"] <= pruned["complete"] * max_steps + pruned["pruned"] * (max_steps - 1)
    assert record["steps_share"] == pytest.approx(pruned["steps"] / unpruned["steps"]) and record["steps_share"] < 1
    # the same seed samples the same first trials (TPE's random start-up), so the pruned study's finished trials
    # are some of the unpruned study's: its best can equal the unpruned best, never beat it (validation loss)
    assert pruned["best"] is not None and pruned["best"] >= unpruned["best"] - 1e-12
    assert record["pruned_bests"] == [pruned["best"]]
    assert record["pruned_best_within_spread"] == (pruned["best"] <= unpruned["best"])


def test_packing_bench_runs_both_ways_and_the_results_agree(tmp_path: Path) -> None:
    records = run_bench(
        "packing.py",
        *("--size", "tiny", "--trials", "2", "--steps", "2", "--packs", "2"),
        json_file=tmp_path / "k.jsonl",
    )
    alone, packed = records
    assert (alone["mode"], packed["mode"]) == ("alone", "pack 2") and packed["same_results"] is True
    assert alone["speedup"] == 1.0
    assert packed["speedup"] == pytest.approx(packed["study_tokens_per_s"] / alone["study_tokens_per_s"])
    assert all(r["wall_s"] > 0 and r["peak_mb"] > 100 for r in records)
