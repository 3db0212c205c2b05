"""Answer alpaca prompts (validation subset or test split) with the model: batched, left-padded, KV-cached decoding.

The judge and ROUGE-L see only the response: generation stops at ``<|endoftext|>`` or where the model starts a
new ``### Instruction:`` (a model trained without the end token runs on into an invented next example), and the
prompt is stripped. The header cut is made on the decoded bytes, so it holds however the BPE split the header;
the same header is also passed to `GPT.generate` as a token stop sequence so finished rows stop early.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from common.files import atomic_open
from tasks.judge.settings import GenerationSettings
from tasks.tokenizer import EOT_ID, get_tokenizer

log = logging.getLogger(__name__)

GENERATIONS_FILE = "generations.jsonl"
STOP_HEADER = "### Instruction:"
RECORD_FIELDS = ("instruction", "input", "output")

StopReason = Literal["eos", "instruction_header", "max_new_tokens"]


@dataclass(frozen=True)
class Continuation:
    """A generated response after the stop rules: its text, the tokens kept, and why it ended."""

    text: str
    n_tokens: int
    stop_reason: StopReason


def cut_response(tokens: Sequence[int], token_bytes: Sequence[bytes], eos_token_id: int = EOT_ID) -> Continuation:
    """Cut generated `tokens` at the first end token, then at a new instruction header; strip whitespace.

    `token_bytes[i]` is the byte string of `tokens[i]` (tiktoken's `decode_single_token_bytes`).
    """
    tokens = list(tokens)
    reason: StopReason = "max_new_tokens"
    if eos_token_id in tokens:
        tokens = tokens[: tokens.index(eos_token_id)]
        reason = "eos"
    ends: list[int] = []
    data = bytearray()
    for i in range(len(tokens)):
        data += token_bytes[i]
        ends.append(len(data))
    position = data.find(STOP_HEADER.encode("utf-8"))
    n_tokens = len(tokens)
    if position >= 0:
        data = data[:position]
        n_tokens = bisect.bisect_right(ends, position)
        reason = "instruction_header"
    return Continuation(bytes(data).decode("utf-8", errors="replace").strip(), n_tokens, reason)


def check_records(records: Sequence[Mapping[str, Any]]) -> None:
    """Each record is {instruction, input, output} with string values; raises naming the first bad row."""
    if not records:
        raise ValueError("the alpaca records to generate for must be non-empty, but got 0 records")
    for i, record in enumerate(records):
        missing = [name for name in RECORD_FIELDS if not isinstance(record.get(name), str)]
        if missing:
            raise ValueError(
                f"record {i} must have string fields {list(RECORD_FIELDS)}, but got "
                f"{ {name: type(record.get(name)).__name__ for name in missing} }"
            )


@torch.no_grad()
def generate_responses(
    model: torch.nn.Module,
    records: Sequence[Mapping[str, Any]],
    settings: GenerationSettings,
    *,
    device: torch.device | str,
    prompt_style: str = "alpaca",
) -> list[dict[str, Any]]:
    """Generate a response per record; returns the rows of `generations.jsonl` in record order.

    `prompt_style` is the task's (`task.prompt_style`), so the model sees the prompt it was trained on.
    """
    check_records(records)
    n_positions = int(getattr(getattr(model, "config", None), "n_positions", 1024))
    prompts = _encode_prompts(records, prompt_style, settings.max_new_tokens, n_positions)
    was_training = model.training
    model.eval()
    try:
        continuations = _generate(model, prompts, settings, device)
    finally:
        model.train(was_training)
    rows = [
        {
            "index": i,
            "instruction": record["instruction"],
            "input": record["input"],
            "output": record["output"],
            "response": continuations[i].text,
            "simple": bool(record["input"].strip()),
            "prompt_style": prompt_style,
            "prompt_tokens": len(prompts[i]),
            "response_tokens": continuations[i].n_tokens,
            "stop_reason": continuations[i].stop_reason,
        }
        for i, record in enumerate(records)
    ]
    reasons = {r: sum(row["stop_reason"] == r for row in rows) for r in ("eos", "instruction_header", "max_new_tokens")}
    log.info("generated %d responses (stops: %s)", len(rows), ", ".join(f"{k} {v}" for k, v in reasons.items()))
    return rows


def _encode_prompts(
    records: Sequence[Mapping[str, Any]], prompt_style: str, max_new_tokens: int, n_positions: int
) -> list[list[int]]:
    """The records' prompts as tokens; one longer than the context less the new tokens keeps its end."""
    from tasks.alpaca import format_prompt  # the task owns the template

    budget = n_positions - max_new_tokens
    if budget < 1:
        raise ValueError(
            f"`judge.generation.max_new_tokens < n_positions` must hold, but got "
            f"max_new_tokens={max_new_tokens}, n_positions={n_positions}"
        )
    tokenizer = get_tokenizer()
    prompts = [
        tokenizer.encode(format_prompt(r["instruction"], r["input"], prompt_style), disallowed_special=())
        for r in records
    ]
    truncated = sum(len(p) > budget for p in prompts)
    if truncated:
        log.warning("%d prompts longer than %d tokens keep their last %d tokens", truncated, budget, budget)
        prompts = [p[-budget:] for p in prompts]
    return prompts


def _generate(
    model: torch.nn.Module, prompts: list[list[int]], settings: GenerationSettings, device: torch.device | str
) -> dict[int, Continuation]:
    """Batches of similar lengths, left-padded, decoded with the KV cache; each row cut by the stop rules."""
    from model import generate

    tokenizer = get_tokenizer()
    stop_sequences = [tokenizer.encode(STOP_HEADER)]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    continuations: dict[int, Continuation] = {}
    with tqdm(total=len(prompts), desc="generate", unit="prompt", dynamic_ncols=True) as bar:
        for batch in _chunks(order, settings.batch_size):
            input_ids, attention_mask = _left_pad([prompts[i] for i in batch], device)
            out = generate(
                model,
                input_ids,
                settings.max_new_tokens,
                temperature=settings.temperature,
                top_k=settings.top_k,
                top_p=settings.top_p,
                eos_token_id=EOT_ID,
                attention_mask=attention_mask,
                stop_sequences=stop_sequences,
            )
            new_tokens = out[:, input_ids.shape[1] :].tolist()
            for i, row in zip(batch, new_tokens, strict=True):
                row_bytes = [tokenizer.decode_single_token_bytes(t) for t in row]
                continuations[i] = cut_response(row, row_bytes, EOT_ID)
            bar.update(len(batch))
    return continuations


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _left_pad(rows: list[list[int]], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask, so every row's next token is at the last column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), EOT_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, row in enumerate(rows):
        ids[j, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[j, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object per line, UTF-8, written atomically (a reader never sees half a file)."""
    with atomic_open(path, durable=True) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a malformed line is an error naming the file and line."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {n} must be one JSON object, but got {line[:60]!r} ({exc})") from exc
    return rows
