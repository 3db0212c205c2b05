"""Scoring alpaca generations: free text metrics (ROUGE-L, exact match) and, when enabled, the Gemini judge.

`evaluate_generations` is what a trial calls at its end; `score_generations` scores existing generations (also for
`python -m tasks.judge RUN_DIR`, see `tasks.judge.cli`). Outputs in the run folder, one set per generated split
(`tasks.judge.outputs`: `val_` for the search's validation prompts, `test_` for a confirmation run's test prompts):
`<split>_generations.jsonl` (one response per record), `<split>_judge.jsonl` (per item: the k scores and raw
replies, mean, std, failures, ROUGE-L, exact match) and `<split>_judge_summary.json` (the summary, the prompt template
and its sha256, the settings). The summary's keys, with the split's prefix, go into metrics.json's `metrics`.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from common.files import write_atomic
from tasks.judge.cache import JudgeCache
from tasks.judge.generation import generate_responses, write_jsonl
from tasks.judge.outputs import outputs_of
from tasks.judge.settings import API_KEY_ENV_VARS, JudgeSettings, JudgeUnavailableError, api_key_from_env
from tasks.judge.text_metrics import exact_match, rouge_l_f1

if TYPE_CHECKING:
    from tasks.judge.client import JudgeReply

# the package's logger: the judge's summary and warnings come from "tasks.judge", whichever module writes them
log = logging.getLogger("tasks.judge")

JUDGE_FILE = outputs_of("").judge  # the names without a split prefix (split="")
SUMMARY_FILE = outputs_of("").summary


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
    split: str = "",
) -> dict[str, float | int | str]:
    """Generate → generations.jsonl → judge (if enabled and a key is set) → judge.jsonl; return the summary.

    Args:
        model: a `model.GPT` (LoRA or not) on `device`.
        records: alpaca records (validation subset or test split), dicts with `instruction`, `input`, `output`.
        judge_cfg: the `judge` config node.
        run_dir: the trial's run folder.
        objective_needs_judge: the trial's objective is `judge`: a judge that cannot run is then an error.
        prompt_style: the task's `task.prompt_style`, for the generation prompts and the judge's input.
        split: `val` or `test`: the prefix of the files written ("" = unprefixed names); the summary's keys stay bare.

    Raises:
        JudgeConfigError: a bad `judge` node (before any generation).
        JudgeUnavailableError: `objective_needs_judge` and no score could be obtained, with the reason.
    """
    settings = judge_preflight(judge_cfg, objective_needs_judge=objective_needs_judge)
    run_dir = Path(run_dir)
    rows = generate_responses(model, records, settings.generation, device=device, prompt_style=prompt_style)
    path = write_jsonl(run_dir / outputs_of(split).generations, rows)
    log.info("wrote %d generations to %s", len(rows), path)
    return score_generations(rows, settings, run_dir, objective_needs_judge=objective_needs_judge, split=split)


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
    split: str = "",
) -> dict[str, float | int | str]:
    """Score existing generations (ROUGE-L, exact match, judge); write the split's judge.jsonl and summary file."""
    files = outputs_of(split)
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

    write_jsonl(run_dir / files.judge, items)
    _write_summary(run_dir / files.summary, summary, settings)
    if reason is not None:
        if objective_needs_judge:
            raise JudgeUnavailableError(f"objective=judge needs the LLM judge, but {reason}")
        # judge.enabled=false is a choice, not a problem: one info line
        say = log.info if not settings.enabled else log.warning
        say("LLM judge %s; the run keeps perplexity, ROUGE-L and exact match", status)
    log.info(
        "judge summary: %s (files: %s, %s in %s)",
        ", ".join(f"{k}={fmt(v)}" for k, v in summary.items() if k != "judge_prompt_sha256"),
        files.judge, files.summary, run_dir,
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
    from tasks.judge.client import GeminiJudge  # google-genai loads only when the judge runs

    cache = JudgeCache(Path(settings.cache_dir)) if settings.cache else None
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
            "structured_output": settings.structured_output,
            "generation": vars(settings.generation),
        },
    }
    write_atomic(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n", durable=True)


def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
