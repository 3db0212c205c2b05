"""Instruction tuning on Stanford Alpaca, as in the report: short responses, fixed-seed splits, masked prompts.

The report's subset keeps records whose ``output`` is under 512 characters and draws 12,000 train / 1,500
validation / 100 test with a fixed seed; the test split is half "simple" instructions (non-empty ``input``) and half
open-ended (empty ``input``). A row is the Alpaca prompt, the response, then ``<|endoftext|>``; by default only the
response and ``<|endoftext|>`` carry loss (``task.mask_prompt``). Rows longer than ``max_length`` tokens keep their
start (the response tail is cut); a row whose prompt alone fills ``max_length`` is dropped and counted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from tasks.base import Task
from tasks.batching import TokenizedSplit
from tasks.metrics import perplexity
from tasks.sources import DataError, Source, hub_source, local_source, read_json_records, require_columns
from tasks.tokenizer import EOT_ID, EOT_TOKEN, get_tokenizer

log = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")

# stanford_alpaca's README / train.py templates, byte for byte (with and without an input)
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
# LLMs-from-scratch ch. 7 (the report's reference; its appendix renders this): one header for both variants
RASCHKA_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_STYLES = ("alpaca", "raschka")


def _templates(style: str) -> tuple[str, str]:
    if style == "alpaca":
        return PROMPT_INPUT, PROMPT_NO_INPUT
    if style == "raschka":
        return RASCHKA_INPUT, PROMPT_NO_INPUT
    raise ValueError(f"prompt_style must be one of {', '.join(PROMPT_STYLES)}, but got prompt_style={style!r}")


def format_prompt(instruction: str, input: str = "", style: str = "alpaca") -> str:
    """The Alpaca prompt up to and including ``### Response:\\n``; the ``### Input:`` block only when `input` is
    not blank. The response follows directly, then ``<|endoftext|>``."""
    with_input, without = _templates(style)
    if input.strip():
        return with_input.format(instruction=instruction, input=input)
    return without.format(instruction=instruction)


def format_example(instruction: str, input: str, output: str, style: str = "alpaca") -> str:
    """The full training text: prompt, response, ``<|endoftext|>``."""
    return format_prompt(instruction, input, style) + output + EOT_TOKEN


def validation_prompts(records: list[dict[str, str]], size: int, seed: int) -> list[dict[str, str]]:
    """The validation rows a trial generates for (and the judge scores) during the search.

    `size` rows, half with an input and half without (the test split's rule), drawn with the split seed
    (`task.seed`), so every trial of a study sees the same rows whatever its `trainer.seed`; in validation order.
    """
    has_input = np.array([r["input"].strip() != "" for r in records], dtype=bool)
    n_with = size // 2
    n_without = size - n_with
    with_pool, without_pool = np.flatnonzero(has_input), np.flatnonzero(~has_input)
    if n_with > len(with_pool) or n_without > len(without_pool):
        raise DataError(
            f"task.val_generate_size must fit in the validation split (half with an input, half without), but got "
            f"val_generate_size={size} for {len(with_pool)} validation rows with an input and {len(without_pool)} "
            "without; lower task.val_generate_size or raise task.val_size"
        )
    rng = np.random.default_rng([seed, 1])  # its own stream of the split seed: independent of the carve
    chosen = np.concatenate(
        [rng.choice(with_pool, n_with, replace=False), rng.choice(without_pool, n_without, replace=False)]
    )
    return [records[i] for i in np.sort(chosen)]


class Alpaca(Task):
    """Stanford Alpaca (Taori et al. 2023, CC BY-NC 4.0), a causal LM task scored by loss and perplexity."""

    name = "alpaca"
    kind: ClassVar[str] = "lm"

    def problems(self, s: dict[str, Any]) -> list[str | None]:
        out = super().problems(s)
        if s["prompt_style"] not in PROMPT_STYLES:
            out.append(
                f"task.prompt_style must be one of {', '.join(PROMPT_STYLES)}, "
                f"but got prompt_style={s['prompt_style']!r}"
            )
        vg = s["val_generate_size"]
        if vg < 0:
            out.append(f"`task.val_generate_size >= 0` must hold (a row count), but got val_generate_size={vg!r}")
        mc = s["max_output_chars"]
        if mc is not None and mc < 1:
            out.append(f"`task.max_output_chars >= 1` must hold (or null = no limit), but got max_output_chars={mc!r}")
        for key in ("train_size", "val_size", "test_size"):
            if isinstance(s.get(key), float) or (key != "train_size" and s.get(key) is None):
                out.append(f"task.{key} must be a row count for alpaca, but got {key}={s.get(key)!r}")
        return out

    def template_id(self, settings: dict[str, Any]) -> str:
        return hashlib.sha256("\0".join(_templates(settings["prompt_style"])).encode()).hexdigest()

    # ------------------------------------------------------------------------------------------------ data

    def source(self, s: dict[str, Any]) -> Source:
        if s.get("path") is None:
            return hub_source(
                s["hub_id"],
                s.get("revision"),
                {"train": "train"},
                reader=_read_hub,
                path_hint="the original alpaca_data.json",
            )
        path = Path(str(s["path"])).expanduser()
        if path.is_dir():
            candidates = (
                [path / "alpaca_data.json"]
                if (path / "alpaca_data.json").is_file()
                else sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
            )
            if len(candidates) != 1:
                raise DataError(
                    f"task.path folder {path} must hold alpaca_data.json or exactly one .json/.jsonl file, but got "
                    f"{sorted(p.name for p in candidates)[:10]}; or set task.path to the file"
                )
            path = candidates[0]
        return local_source({"train": [path]}, _read_local)

    def build(
        self, s: dict[str, Any], source: Source, max_length: int
    ) -> tuple[dict[str, TokenizedSplit], dict[str, Any]]:
        df, dropped = self._clean(source.read()["train"], s)
        plan = self._carve(df, s, source)
        enc = get_tokenizer()
        log.info("%s: tokenizing %d records from %s", self.name, sum(len(r) for r in plan.values()), source.description)
        splits, info_splits, records = {}, {}, {}
        for split in ("train", "val", "test"):
            part = df.iloc[plan[split]]
            splits[split], info_splits[split], kept = self._tokenize(part, split, s, max_length, enc)
            if split != "train":  # the prompts a trial may generate for (validation: a fixed subset of them)
                records[split] = part.iloc[kept][list(FIELDS)].to_dict("records")
        info = {
            "task": self.name,
            "kind": self.kind,
            "source": source.description,
            "max_length": max_length,
            "truncation": "right (keep the prompt and the start of the response)",
            "prompt_style": s["prompt_style"],
            "dropped": dropped,
            "splits": info_splits,
        }
        return splits, {"info": info, "test_records": records["test"], "val_records": records["val"]}

    def _clean(self, df: pd.DataFrame, s: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, int]]:
        """String fields checked; records without instruction or output, or with too long an output, dropped."""
        for field in FIELDS:
            bad = ~df[field].map(lambda v: isinstance(v, str))
            if bad.any():
                first = df.loc[bad].iloc[0]
                raise DataError(
                    f"field {field!r} must be a string in every record, but got {first[field]!r} in record "
                    f"{first['_row']} of {first['_file']} ({int(bad.sum())} such records)"
                )
        dropped = {
            "empty_instruction": int((df["instruction"].str.strip() == "").sum()),
            "empty_output": int((df["output"].str.strip() == "").sum()),
        }
        keep = (df["instruction"].str.strip() != "") & (df["output"].str.strip() != "")
        if s["max_output_chars"] is not None:
            long = keep & (df["output"].str.len() >= s["max_output_chars"])
            dropped[f"output_{s['max_output_chars']}_chars_or_more"] = int(long.sum())
            keep &= ~long
        log.info("%s: %d of %d records kept (%s)", self.name, int(keep.sum()), len(keep), dropped)
        return df[keep].reset_index(drop=True), dropped

    def _tokenize(
        self, part: pd.DataFrame, split: str, s: dict[str, Any], max_length: int, enc: Any
    ) -> tuple[TokenizedSplit, dict[str, Any], list[int]]:
        """One split's rows (prompt + response + end token, cut at `max_length`), its report, the records kept."""
        prompts = [
            format_prompt(i, x, s["prompt_style"]) for i, x in zip(part["instruction"], part["input"], strict=True)
        ]
        p_ids = enc.encode_ordinary_batch(prompts)
        r_ids = enc.encode_ordinary_batch(part["output"].tolist())
        ids, prompt_lens, kept, cut = [], [], [], 0
        for k, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
            if len(p) >= max_length:
                continue  # no room for a single response token
            row = p + r + [EOT_ID]
            if len(row) > max_length:
                row, cut = row[:max_length], cut + 1
            ids.append(row)
            prompt_lens.append(len(p))
            kept.append(k)
        too_long = len(p_ids) - len(kept)
        if not ids:
            raise DataError(
                f"every {split} prompt is at least max_length={max_length} tokens; raise task.max_length "
                "(and use a model with a longer context)"
            )
        has_input = part["input"].str.strip().to_numpy()[kept] != ""
        info = {
            "rows": len(ids),
            "truncated": cut,
            "dropped": {"prompt_fills_max_length": too_long},
            "with_input": int(has_input.sum()),
            "without_input": int((~has_input).sum()),
        }
        if cut or too_long:
            log.info(
                "%s: %s rows cut to %d tokens: %d; dropped (prompt too long): %d",
                self.name, split, max_length, cut, too_long,
            )  # fmt: skip
        split_rows = TokenizedSplit.from_rows(ids, prompt_lens=prompt_lens, mask_prompt=s["mask_prompt"])
        return split_rows, info, kept

    def _carve(self, df: pd.DataFrame, s: dict[str, Any], source: Source) -> dict[str, np.ndarray]:
        """Test: half with an input, half without; then validation and train at random, all from one seed."""
        rng = np.random.default_rng(s["seed"])
        has_input = (df["input"].str.strip() != "").to_numpy()
        with_pool, without_pool = (
            rng.permutation(np.flatnonzero(has_input)),
            rng.permutation(np.flatnonzero(~has_input)),
        )
        n_with = s["test_size"] // 2
        n_without = s["test_size"] - n_with
        n_train = s["train_size"] if s["train_size"] is not None else len(df) - s["test_size"] - s["val_size"]
        need = s["test_size"] + s["val_size"] + max(n_train, 1)
        what = f"records with an output under {s['max_output_chars']} characters in {source.description}"
        if need > len(df) or n_with > len(with_pool) or n_without > len(without_pool):
            raise DataError(
                f"train_size + val_size + test_size must fit in the {len(df)} {what} ({len(with_pool)} with an input, "
                f"{len(without_pool)} without; the test split takes half from each), but got train_size="
                f"{s['train_size']}, val_size={s['val_size']}, test_size={s['test_size']}; lower task.train_size, "
                "task.val_size or task.test_size"
            )
        test = np.concatenate([with_pool[:n_with], without_pool[:n_without]])
        rest = rng.permutation(np.concatenate([with_pool[n_with:], without_pool[n_without:]]))
        return {
            "train": rest[s["val_size"] : s["val_size"] + n_train],
            "val": rest[: s["val_size"]],
            "test": np.sort(test),
        }

    # --------------------------------------------------------------------------------------------- metrics

    def compute_loss(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Mean next-token NLL over the label positions (response + ``<|endoftext|>``), and their count."""
        n = int((batch["labels"] != -100).sum())
        total = model.lm_loss(batch["input_ids"], batch["labels"], batch["attention_mask"], reduction="sum")
        return total / max(n, 1), n

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """``loss`` (mean NLL per response token) and ``perplexity`` (its exp) over all batches."""
        was_training = model.training
        model.eval()
        nll, n = 0.0, 0
        try:
            for batch in batches:
                nll += float(
                    model.lm_loss(batch["input_ids"], batch["labels"], batch["attention_mask"], reduction="sum")
                )
                n += int((batch["labels"] != -100).sum())
        finally:
            model.train(was_training)
        if n == 0:
            raise ValueError("evaluate needs batches with at least one label token, but got none")
        return {"loss": nll / n, "perplexity": perplexity(nll, n)}


def _check_fields(df: pd.DataFrame, where: str) -> pd.DataFrame:
    require_columns(df, FIELDS, where)
    return df.assign(_row=np.arange(1, len(df) + 1))


def _read_local(path: Path) -> pd.DataFrame:
    records = read_json_records(path)
    if not records:
        raise DataError(f"{path} must hold at least one record, but got an empty list")
    return _check_fields(pd.DataFrame.from_records(records), f"{path} (records)")


def _read_hub(path: Path) -> pd.DataFrame:
    return _check_fields(pd.read_parquet(path), str(path))
