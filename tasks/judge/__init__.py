"""Instruction evaluation for alpaca: generate responses, score them with free metrics and a Gemini judge.

A trial calls `judge_preflight` before training (a judge objective without a key fails in seconds) and
`evaluate_generations` at its end; users re-score an old run folder with

    python -m tasks.judge RUN_DIR [judge.model=... judge.repeats=3 ...]

Inside: `generation` (batched KV-cached decoding and the stop rules), `scoring` (text metrics, the judge's summary,
the output files), `client` (Gemini calls: concurrency, retries, pacing), `cache` (replies on disk), `settings`
(the `judge` config node, checked), `text_metrics` (ROUGE-L, exact match), `cli` (the re-scoring command).
google-genai is imported only when the judge actually runs.
"""

from tasks.judge.scoring import evaluate_generations, judge_preflight
from tasks.judge.settings import JudgeConfigError, JudgeUnavailableError

__all__ = ["JudgeConfigError", "JudgeUnavailableError", "evaluate_generations", "judge_preflight"]
