"""Look at a task's data before spending compute on it: ``python -m tasks.inspect task=<name> [overrides]``.

Composes the same Hydra config as sweep.py (conf/config.yaml with your overrides), loads the task exactly as a
trial would (through the token cache), and prints per split: size, per-class counts and the majority-class baseline
(classification) or with/without-input counts (alpaca), token-length percentiles, rows dropped or truncated and why,
and one rendered example. Bad data exits with status 1 and the one-line error.

    python -m tasks.inspect task=sms_spam
    python -m tasks.inspect task=sst2 task.path=data/SST-2 model=tiny
    python -m tasks.inspect task=alpaca task.path=alpaca_data.json task.train_size=2000
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Sequence

import numpy as np
from omegaconf import DictConfig

import tasks.config  # noqa: F401  (registers the schemas and resolvers conf/config.yaml needs)
from tasks.base import Task, TaskData
from tasks.baselines import majority_baseline
from tasks.batching import TokenizedSplit
from tasks.config.cli import compose_checked
from tasks.config.options import CONF_DIR
from tasks.registry import get_task
from tasks.tokenizer import get_tokenizer

log = logging.getLogger(__name__)

PERCENTILES = (50, 90, 99)


def compose(overrides: Sequence[str]) -> DictConfig:
    """conf/config.yaml with `overrides`, with Hydra's runtime set so ``${hydra:...}`` paths resolve.

    The sweeper is set to Hydra's basic one: inspecting never sweeps, so it needs no study or plugin.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="inspect"):
        cfg = hydra_compose("config", overrides=[*overrides, "hydra/sweeper=basic"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def n_positions(cfg: DictConfig) -> int:
    """The model's context length (GPT-2: 1024), so truncation matches what a trial would do."""
    try:
        from model import GPTConfig

        return GPTConfig.from_preset(cfg.model.preset).n_positions
    except (ImportError, ValueError, AttributeError):
        return 1024


def _lengths_row(split: TokenizedSplit) -> list[str]:
    lengths = split.lengths
    return [str(int(v)) for v in np.percentile(lengths, PERCENTILES)] + [str(int(lengths.max()))]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([fmt(header), *(fmt(r) for r in rows)])


def _quote(text: str) -> str:
    return textwrap.indent(text.rstrip("\n"), "  | ", predicate=lambda _: True)


def _example(task: Task, data: TaskData) -> str:
    enc, split = get_tokenizer(), data.train
    ids = split.row(0)
    if split.labels is not None:
        label = task.class_names[int(split.labels[0])] if task.class_names else int(split.labels[0])
        return f"train row 0, label {label!r}, {len(ids)} tokens:\n" + _quote(enc.decode(ids))
    p = int(split.prompt_lens[0])
    loss = "loss" if split.mask_prompt else "loss on prompt and response"
    return (
        f"train row 0, {len(ids)} tokens ({p} prompt, {len(ids) - p} response incl. <|endoftext|>):\n"
        + _quote(enc.decode(ids[:p]))
        + f"\n  |--- response ({loss}) ---\n"
        + _quote(enc.decode(ids[p:]))
    )


def report(task: Task, data: TaskData) -> str:
    """The inspection text for a loaded task."""
    info = data.info
    classes = f", classes: {', '.join(task.class_names)}" if task.class_names else ""
    lines = [
        f"task {task.name} ({task.kind}{classes})",
        f"source: {info.get('source')}",
        f"token cache: {'hit' if info.get('cache_hit') else 'built'} {info.get('cache_file', '')}".rstrip(),
        f"max length: {info.get('max_length')} tokens; longer rows are cut on the {info.get('truncation')}",
        "dropped before splitting: " + (", ".join(f"{k}={v}" for k, v in info.get("dropped", {}).items()) or "none"),
    ]
    if info.get("balanced"):
        lines.append("classes balanced by undersampling (task.balance=true)")
    pct = [f"p{p}" for p in PERCENTILES] + ["max"]
    if task.kind == "classification":
        names = list(task.class_names or ())
        header = ["split", "rows", *names, *(f"len {c}" for c in pct), "truncated", "from"]
        rows = []
        for name, split in data.splits().items():
            s = info["splits"][name]
            counts = [str(s["class_counts"].get(n, 0)) for n in names]
            rows.append([name, str(len(split)), *counts, *_lengths_row(split), str(s["truncated"]), s.get("from", "")])
    else:
        header = ["split", "rows", "with input", "without", *(f"len {c}" for c in pct), "truncated", "dropped"]
        rows = []
        for name, split in data.splits().items():
            s = info["splits"][name]
            dropped = ", ".join(f"{k}={v}" for k, v in s.get("dropped", {}).items() if v) or "0"
            inputs = [str(s["with_input"]), str(s["without_input"])]
            rows.append([name, str(len(split)), *inputs, *_lengths_row(split), str(s["truncated"]), dropped])
    lines += ["", _table(header, rows)]
    if data.train.labels is not None:
        lines += ["", _majority(data)]
    lines += ["", "example: " + _example(task, data)]
    return "\n".join(lines)


def _majority(data: TaskData) -> str:
    """The majority-class row: what always predicting the train split's most frequent class scores per split."""
    splits = {name: split.labels for name, split in data.splits().items() if split.labels is not None}
    row = majority_baseline(data.train.labels, splits, data.class_names)
    scores = "; ".join(
        f"{name} accuracy {row[f'majority_{name}_accuracy']:.3f}, macro-F1 {row[f'majority_{name}_macro_f1']:.3f}"
        for name in splits
        if f"majority_{name}_accuracy" in row
    )
    return f"majority class {row['majority_class']!r} (the train split's), always predicted: {scores}"


def main(argv: Sequence[str] | None = None) -> int:
    """Compose, load, print; 1 with a one-line error on bad config or data."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = compose_checked(compose, argv)  # a bad key or option: one line with the nearest real one
        task = get_task(cfg.task)
        data = task.load(cfg.task, n_positions(cfg), cache_dir=cfg.paths.cache_dir)
    except (ValueError, OSError, RuntimeError, HydraException, OmegaConfBaseException) as e:
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(report(task, data))
    print(f"\nsettings: {task.settings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
