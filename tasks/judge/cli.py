"""`python -m tasks.judge RUN_DIR [judge.<key>=<value> ...]`: re-score an old run's generations with the judge.

Settings: the run's own judge config (its metrics.json), else conf/judge/gemini.yaml, then the overrides. Every
generated split of the run is re-scored (`val_generations.jsonl`, `test_generations.jsonl`, or an older run's
`generations.jsonl`): its judge.jsonl and judge_summary.json are rewritten and metrics.json's `metrics` updated under
the split's names (`val_judge_mean`, `test_judge_mean`, or `judge_mean` for an older run).
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
from tasks.config.keys import schema_problem
from tasks.config.options import option_config
from tasks.judge.generation import read_jsonl
from tasks.judge.outputs import GENERATED_SPLITS, LEGACY, SplitOutputs, generated_in
from tasks.judge.scoring import fmt, judge_preflight, score_generations
from tasks.judge.settings import JudgeUnavailableError

USAGE = """usage: python -m tasks.judge RUN_DIR [judge.<key>=<value> ...]

Re-score RUN_DIR's generations (val_generations.jsonl, test_generations.jsonl, or an older run's generations.jsonl)
with the LLM judge; writes the split's judge.jsonl and judge_summary.json into RUN_DIR and updates metrics.json's
`metrics` there (val_judge_mean, test_judge_mean, ...). Settings: the run's own judge config (metrics.json), else
conf/judge/gemini.yaml, then the overrides, e.g. judge.model=gemini-flash-latest judge.repeats=3.
The key comes from GOOGLE_API_KEY or GEMINI_API_KEY."""


def load_judge_config(run_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """The run's own `judge` node (from metrics.json's resolved config), else conf/judge/gemini.yaml; then overrides.

    Raises:
        ValueError: an override that is no `judge.<key>=<value>`, or names a key the judge does not have (with the
            nearest one it has).
    """
    metrics_path = run_dir / "metrics.json"
    saved: Any = None
    if metrics_path.is_file():
        saved = (json.loads(metrics_path.read_text(encoding="utf-8")).get("config") or {}).get("judge")
    cfg = option_config("judge", "gemini")
    cfg.cache_dir = None  # resolved by JudgeSettings: $LORASWEEP_CACHE_DIR/judge or ./.cache/judge
    dotlist = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.startswith("judge."):
            raise ValueError(f"overrides must look like judge.<key>=<value>, but got {item!r}")
        dotlist.append(item.removeprefix("judge."))
    try:
        if saved is not None:  # a run's own settings, as saved (older runs may lack newer keys: the defaults fill them)
            cfg = OmegaConf.merge(cfg, saved)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as exc:
        raise ValueError(schema_problem(exc, OmegaConf.from_dotlist(dotlist), "judge.")) from None
    cfg.enabled = True  # asking for a re-score is asking for the judge, whatever the run was set to
    return cfg  # type: ignore[return-value]


def rescore_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, dict[str, float | int | str]]:
    """Re-score every generated split of RUN_DIR; write its judge files, update metrics.json's metrics.

    Returns each split's summary (bare keys), by split name ("" for a run from before the split prefix).
    """
    run_dir = Path(run_dir)
    found = generated_in(run_dir)
    if not found:
        names = ", ".join(SplitOutputs(s).generations for s in (*GENERATED_SPLITS, LEGACY))
        raise FileNotFoundError(
            f"RUN_DIR must hold one of {names} from an alpaca trial, but got run_dir={str(run_dir)!r} without any"
        )
    settings = judge_preflight(load_judge_config(run_dir, overrides), objective_needs_judge=True)
    rows = {o.split: read_jsonl(run_dir / o.generations) for o in found}
    for o in found:
        if not rows[o.split]:
            raise ValueError(f"{run_dir / o.generations} must hold at least one generation, but got an empty file")
    summaries = {
        o.split: score_generations(rows[o.split], settings, run_dir, objective_needs_judge=True, split=o.split)
        for o in found
    }
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        data = json.loads(metrics_path.read_text(encoding="utf-8"))
        metrics = dict(data.get("metrics") or {})
        for o in found:
            metrics = {k: v for k, v in metrics.items() if not o.owns(k)}
            metrics.update(o.metric_names(summaries[o.split]))
        data["metrics"] = metrics
        write_atomic(metrics_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n", durable=True)
    return summaries


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
        summaries = rescore_run(run_dir, args[1:])
    except (ValueError, FileNotFoundError, JudgeUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split, summary in summaries.items():
        o = SplitOutputs(split)
        print(
            f"{split or 'generations'}: judge {summary['judge_model']}: mean {fmt(summary.get('judge_mean'))} ± "
            f"{fmt(summary.get('judge_std'))} over {summary['judge_n_scored']} scores ({summary['judge_n_failed']} "
            f"failed), ROUGE-L {fmt(summary['rouge_l'])}; wrote {run_dir / o.judge} and {run_dir / o.summary}"
        )
    return 0
