"""Instruction evaluation for alpaca: generate responses, score them with free metrics and a Gemini judge.

The trainer calls `evaluate_generations` at the end of an alpaca trial; users re-score an old run folder with

    python -m tasks.judge RUN_DIR [judge.model=... judge.repeats=3 ...]

Outputs in the run folder: `generations.jsonl` (one response per test record), `judge.jsonl` (per item: the k
scores and raw replies, mean, std, failures, ROUGE-L, exact match) and `judge_summary.json` (the summary, the
prompt template and its sha256, the settings). The summary's keys go into metrics.json's `metrics`.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tasks.generation import GENERATIONS_FILE, generate_responses, read_jsonl, write_jsonl
from tasks.judge_cache import JudgeCache
from tasks.judge_client import GeminiJudge, JudgeReply
from tasks.judge_settings import (
    API_KEY_ENV_VARS,
    JudgeConfigError,
    JudgeSettings,
    JudgeUnavailableError,
    api_key_from_env,
)
from tasks.text_metrics import exact_match, rouge_l_f1

log = logging.getLogger(__name__)

JUDGE_FILE = "judge.jsonl"
SUMMARY_FILE = "judge_summary.json"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "judge" / "gemini.yaml"
USAGE = """usage: python -m tasks.judge RUN_DIR [judge.<key>=<value> ...]

Re-score RUN_DIR/generations.jsonl with the LLM judge; writes judge.jsonl and judge_summary.json into RUN_DIR and
updates metrics.json's `metrics` there. Settings: the run's own judge config (metrics.json), else
conf/judge/gemini.yaml, then the overrides, e.g. judge.model=gemini-flash-latest judge.repeats=3.
The key comes from GOOGLE_API_KEY or GEMINI_API_KEY."""

__all__ = [
    "JUDGE_FILE",
    "SUMMARY_FILE",
    "JudgeConfigError",
    "JudgeUnavailableError",
    "evaluate_generations",
    "format_judge_input",
    "judge_preflight",
    "score_generations",
]


def judge_preflight(judge_cfg: DictConfig | Mapping[str, Any], *, objective_needs_judge: bool) -> JudgeSettings:
    """Check the judge settings (and, when the objective needs it, that a key is set) before training starts."""
    settings = JudgeSettings.from_config(judge_cfg)
    if objective_needs_judge:
        reason = _skip_reason(settings)
        if reason is not None:
            raise JudgeUnavailableError(f"objective=judge needs the LLM judge, but {reason}")
    return settings


def evaluate_generations(
    model: torch.nn.Module,
    records: Sequence[Mapping[str, Any]],
    judge_cfg: DictConfig | Mapping[str, Any],
    run_dir: str | Path,
    *,
    device: torch.device | str,
    objective_needs_judge: bool,
    prompt_style: str = "alpaca",
) -> dict[str, float | int | str]:
    """Generate → generations.jsonl → judge (if enabled and a key is set) → judge.jsonl; return the summary.

    Args:
        model: a `model.GPT` (LoRA or not) on `device`.
        records: the alpaca test records, dicts with `instruction`, `input`, `output`.
        judge_cfg: the `judge` config node.
        run_dir: the trial's run folder.
        objective_needs_judge: the trial's objective is `judge`: a judge that cannot run is then an error.
        prompt_style: the task's `task.prompt_style`, for the generation prompts and the judge's input.

    Raises:
        JudgeConfigError: a bad `judge` node (before any generation).
        JudgeUnavailableError: `objective_needs_judge` and no score could be obtained, with the reason.
    """
    settings = judge_preflight(judge_cfg, objective_needs_judge=objective_needs_judge)
    run_dir = Path(run_dir)
    rows = generate_responses(model, records, settings.generation, device=device, prompt_style=prompt_style)
    path = write_jsonl(run_dir / GENERATIONS_FILE, rows)
    log.info("wrote %d generations to %s", len(rows), path)
    return score_generations(rows, settings, run_dir, objective_needs_judge=objective_needs_judge)


def format_judge_input(instruction: str, input_text: str, prompt_style: str = "alpaca") -> str:
    """The Alpaca prompt without its trailing "### Response:" header: the report's `format_input(entry)`."""
    from tasks.alpaca import format_prompt

    prompt = format_prompt(instruction, input_text, prompt_style).rstrip()
    return prompt.removesuffix("### Response:").rstrip()


def score_generations(
    rows: Sequence[Mapping[str, Any]],
    settings: JudgeSettings,
    run_dir: Path,
    *,
    objective_needs_judge: bool,
) -> dict[str, float | int | str]:
    """Score existing generations (ROUGE-L, exact match, judge); write judge.jsonl and judge_summary.json."""
    items = [_text_scores(row) for row in rows]
    summary: dict[str, float | int | str] = _text_summary(items)
    summary.update(judge_model=settings.model, judge_prompt_sha256=settings.prompt_sha256)

    reason = _skip_reason(settings)
    if reason is not None:
        status = f"skipped: {reason}"
    else:
        replies, stopped = _run_judge(rows, settings)
        summary.update(_judge_summary(items, replies, settings.repeats))
        if summary["judge_n_scored"] == 0:
            reason = stopped or "no reply could be parsed as a score 0-100"
            status = f"failed: {reason}"
        elif stopped is not None:
            reason, status = stopped, f"partial: {stopped}"
        else:
            status = "ok"
    summary["judge_status"] = status

    write_jsonl(run_dir / JUDGE_FILE, items)
    _write_summary(run_dir / SUMMARY_FILE, summary, settings)
    if reason is not None:
        if objective_needs_judge:
            raise JudgeUnavailableError(f"objective=judge needs the LLM judge, but {reason}")
        log.warning("LLM judge %s; the run keeps perplexity, ROUGE-L and exact match", status)
    log.info(
        "judge summary: %s (files: %s, %s in %s)",
        ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items() if k != "judge_prompt_sha256"),
        JUDGE_FILE, SUMMARY_FILE, run_dir,
    )  # fmt: skip
    return summary


def _skip_reason(settings: JudgeSettings) -> str | None:
    if not settings.enabled:
        return "judge.enabled=false"
    if api_key_from_env() is None:
        return f"no API key: set {' or '.join(API_KEY_ENV_VARS)} in the environment"
    return None


def _run_judge(rows: Sequence[Mapping[str, Any]], settings: JudgeSettings) -> tuple[list[list[JudgeReply]], str | None]:
    """Ask the judge; returns the replies and the reason it stopped early (None when it ran to the end)."""
    prompts = [
        settings.prompt_template.format(
            input=format_judge_input(row["instruction"], row["input"], row.get("prompt_style", "alpaca")),
            output=row["output"],
            response=row["response"],
        )
        for row in rows
    ]
    cache = JudgeCache(settings.cache_dir) if settings.cache else None
    judge = GeminiJudge(settings, api_key_from_env() or "", cache)
    try:
        replies = judge.score(prompts, settings.repeats)
    finally:
        judge.close()
        if cache is not None:
            cache.close()
    return replies, judge.unavailable_reason


def _text_scores(row: Mapping[str, Any]) -> dict[str, Any]:
    simple = bool(row.get("simple", bool(str(row["input"]).strip())))
    return {
        "index": row.get("index"),
        "instruction": row["instruction"],
        "input": row["input"],
        "output": row["output"],
        "response": row["response"],
        "simple": simple,
        "rouge_l": rouge_l_f1(row["response"], row["output"]),
        "exact_match": exact_match(row["response"], row["output"]) if simple else None,
    }


def _text_summary(items: list[dict[str, Any]]) -> dict[str, float | int | str]:
    simple = [item["exact_match"] for item in items if item["simple"]]
    summary: dict[str, float | int | str] = {
        "rouge_l": statistics.fmean(item["rouge_l"] for item in items),
        "exact_match_n": len(simple),
    }
    if simple:
        summary["exact_match"] = sum(simple) / len(simple)
    return summary


def _judge_summary(
    items: list[dict[str, Any]], replies: list[list[JudgeReply]], repeats: int
) -> dict[str, float | int | str]:
    """Fill each item's judge fields; overall mean/std over the items' means (population std)."""
    item_means, item_stds = [], []
    n_parse = n_request = 0
    for item, calls in zip(items, replies, strict=True):
        scores = [c.score for c in calls if c.score is not None]
        parse_failures = sum(c.score is None and c.reply is not None for c in calls)
        request_failures = sum(c.reply is None for c in calls)
        n_parse += parse_failures
        n_request += request_failures
        item.update(
            judge_scores=[c.score for c in calls],
            judge_replies=[c.reply for c in calls],
            judge_errors=[c.error for c in calls if c.error],
            judge_mean=statistics.fmean(scores) if scores else None,
            judge_std=statistics.pstdev(scores) if scores else None,
            judge_n_scored=len(scores),
            judge_parse_failures=parse_failures,
            judge_request_failures=request_failures,
            judge_cached=sum(c.cached for c in calls),
        )
        if scores:
            item_means.append(item["judge_mean"])
            item_stds.append(item["judge_std"])
    n_scored = sum(item["judge_n_scored"] for item in items)
    summary: dict[str, float | int | str] = {
        "judge_n_scored": n_scored,
        "judge_n_failed": n_parse + n_request,
        "judge_n_parse_failures": n_parse,
        "judge_n_request_failures": n_request,
        "judge_repeats": repeats,
    }
    if item_means:
        summary["judge_mean"] = statistics.fmean(item_means)
        summary["judge_std"] = statistics.pstdev(item_means)
        if repeats > 1:
            summary["judge_repeat_std"] = statistics.fmean(item_stds)  # the judge's own noise per item
    return summary


def _write_summary(path: Path, summary: Mapping[str, Any], settings: JudgeSettings) -> None:
    record = {
        "summary": dict(summary),
        "prompt_template": settings.prompt_template,
        "prompt_sha256": settings.prompt_sha256,
        "settings": {
            "model": settings.model,
            "base_url": settings.base_url,
            "repeats": settings.repeats,
            "concurrency": settings.concurrency,
            "temperature": 0.0,
            "thinking_level": settings.thinking_level,
            "generation": vars(settings.generation),
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)


# --- the re-scoring command ------------------------------------------------------------------------------------


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
        tmp = metrics_path.with_name("metrics.json.tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(metrics_path)
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
        f"judge {summary['judge_model']}: mean {_fmt(summary.get('judge_mean'))} ± {_fmt(summary.get('judge_std'))} "
        f"over {summary['judge_n_scored']} scores ({summary['judge_n_failed']} failed), "
        f"ROUGE-L {_fmt(summary['rouge_l'])}; wrote {run_dir / JUDGE_FILE} and {run_dir / SUMMARY_FILE}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
