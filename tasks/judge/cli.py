"""`python -m tasks.judge RUN_DIR [judge.<key>=<value> ...]`: re-score an old run's generations with the judge.

Settings: the run's own judge config (its metrics.json), else conf/judge/gemini.yaml, then the overrides. Writes
judge.jsonl and judge_summary.json into RUN_DIR and updates metrics.json's `metrics` there.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.files import write_atomic
from tasks.judge.generation import GENERATIONS_FILE, read_jsonl
from tasks.judge.scoring import JUDGE_FILE, SUMMARY_FILE, fmt, judge_preflight, score_generations
from tasks.judge.settings import JudgeUnavailableError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "judge" / "gemini.yaml"
USAGE = """usage: python -m tasks.judge RUN_DIR [judge.<key>=<value> ...]

Re-score RUN_DIR/generations.jsonl with the LLM judge; writes judge.jsonl and judge_summary.json into RUN_DIR and
updates metrics.json's `metrics` there. Settings: the run's own judge config (metrics.json), else
conf/judge/gemini.yaml, then the overrides, e.g. judge.model=gemini-flash-latest judge.repeats=3.
The key comes from GOOGLE_API_KEY or GEMINI_API_KEY."""


def load_judge_config(run_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """The run's own `judge` node (from metrics.json's resolved config), else conf/judge/gemini.yaml; then overrides."""
    metrics_path = run_dir / "metrics.json"
    base: Any = None
    if metrics_path.is_file():
        base = (json.loads(metrics_path.read_text(encoding="utf-8")).get("config") or {}).get("judge")
    if base is None:
        defaults = OmegaConf.load(DEFAULT_CONFIG)
        defaults.cache_dir = None  # resolved by JudgeSettings: $LORASWEEP_CACHE_DIR/judge or ./.cache/judge
        base = defaults
    cfg = OmegaConf.create(base)
    cfg.enabled = True  # asking for a re-score is asking for the judge, whatever the run was set to
    OmegaConf.set_struct(cfg, True)
    dotlist = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.startswith("judge."):
            raise ValueError(f"overrides must look like judge.<key>=<value>, but got {item!r}")
        dotlist.append(item.removeprefix("judge."))
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        name = f"judge.{getattr(exc, 'full_key', None) or '?'}"
        raise ValueError(f"overrides must name existing judge keys {sorted(cfg.keys())}, but got {name}") from exc


def rescore_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, float | int | str]:
    """Re-score RUN_DIR/generations.jsonl; write judge.jsonl + judge_summary.json, update metrics.json's metrics."""
    run_dir = Path(run_dir)
    generations = run_dir / GENERATIONS_FILE
    if not generations.is_file():
        raise FileNotFoundError(
            f"RUN_DIR must hold {GENERATIONS_FILE} from an alpaca trial, but got run_dir={str(run_dir)!r} without it"
        )
    settings = judge_preflight(load_judge_config(run_dir, overrides), objective_needs_judge=True)
    rows = read_jsonl(generations)
    if not rows:
        raise ValueError(f"{generations} must hold at least one generation, but got an empty file")
    summary = score_generations(rows, settings, run_dir, objective_needs_judge=True)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        data = json.loads(metrics_path.read_text(encoding="utf-8"))
        metrics = {k: v for k, v in (data.get("metrics") or {}).items() if not k.startswith("judge_")}
        metrics.update(summary)
        data["metrics"] = metrics
        write_atomic(metrics_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n", durable=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tasks.judge RUN_DIR [judge.key=value ...]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    run_dir = Path(args[0])
    try:
        summary = rescore_run(run_dir, args[1:])
    except (ValueError, FileNotFoundError, JudgeUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"judge {summary['judge_model']}: mean {fmt(summary.get('judge_mean'))} ± {fmt(summary.get('judge_std'))} "
        f"over {summary['judge_n_scored']} scores ({summary['judge_n_failed']} failed), "
        f"ROUGE-L {fmt(summary['rouge_l'])}; wrote {run_dir / JUDGE_FILE} and {run_dir / SUMMARY_FILE}"
    )
    return 0
