"""Greedy generation with the KV cache: lorasweep's `GPT.generate` against transformers' `generate`, side by side.

    python bench/generate.py                                    # tiny and small: batch 1 and the judge's batches
    python bench/generate.py --size small --case single --reps 5
    python bench/generate.py --size tiny --new-tokens 8 --prompts 8 --reps 1   # the CI smoke run
    python bench/generate.py --json bench.jsonl

Both sides load the same random weights (ours exported with `model.checkpoint.export_hf`, read by
`GPT2LMHeadModel.from_pretrained(..., attn_implementation="sdpa")`), so greedy decoding must give the same tokens;
the table says whether it did.

Cases:
- `single`: batch 1, a 32-token prompt, `--new-tokens` (64) new tokens, no end-of-text: ms per new token.
- `batched`: the judge's job: the first `--prompts` (100) Alpaca prompts of the shared sample, sorted by length,
  in batches of 16, left-padded. Random weights never say <|endoftext|>, so the end-of-sequence id is a token
  they emit often in a first pass, picked so that rows finish at spread-out steps, as a trained model's do. Ours drops
  finished rows from the batch; transformers keeps computing them until the whole batch is done.

Each (side, repetition) runs in a fresh process, alternating; each process times `--inner` calls, the median counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

BATCH_SIZE = 16  # conf/judge: generation.batch_size


def _load(side: str, folder: str) -> Any:
    import torch

    if side == "ours":
        from model import from_pretrained

        return from_pretrained(folder).eval()
    C.quiet_peer()
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32).eval()


def _generate(side: str, model: Any, ids: Any, mask: Any, new_tokens: int, eos: int | None) -> Any:
    import torch

    if side == "ours":
        from model import generate

        return generate(model, ids, new_tokens, eos_token_id=eos, attention_mask=mask, pad_token_id=50256)
    with torch.inference_mode():
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=50256,
        )


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one side, warm up, time `inner` runs of the case; returns time, tokens and the generated ids."""
    import torch

    torch.set_num_threads(spec["threads"])
    model = _load(spec["side"], spec["folder"])
    batches = [(torch.tensor(b["ids"]), torch.tensor(b["mask"])) for b in spec["batches"]]
    _generate(spec["side"], model, batches[0][0][:1, -8:], None, 4, None)  # warm-up
    times, outputs = [], []
    for _ in range(spec["inner"]):
        t = time.perf_counter()
        outputs = [_generate(spec["side"], model, ids, mask, spec["new_tokens"], spec["eos"]) for ids, mask in batches]
        times.append(time.perf_counter() - t)
    new = []  # each row's new tokens up to and including eos (what a caller keeps)
    for (ids, _), out in zip(batches, outputs, strict=True):
        for row in out[:, ids.shape[1] :].tolist():
            if spec["eos"] in row:
                row = row[: row.index(spec["eos"]) + 1]
            new.append(row)
    return {"seconds": C.median(times), "new_tokens": sum(len(r) for r in new), "rows": new}


def _batches_single(prompt_len: int) -> list[dict[str, Any]]:
    import torch

    ids = torch.randint(0, 50257, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    return [{"ids": ids.tolist(), "mask": torch.ones_like(ids).tolist()}]


def _batches_judge(n_prompts: int) -> list[dict[str, Any]]:
    """The judge's batching of the first `n_prompts` Alpaca prompts (tasks.judge.generation.generate_responses)."""
    from tasks.alpaca import format_prompt
    from tasks.judge.generation import _left_pad
    from tasks.sources import read_json_records
    from tasks.tokenizer import get_tokenizer

    records = read_json_records(C.shared_dir() / "data" / "alpaca" / "alpaca_sample.json")[:n_prompts]
    enc = get_tokenizer()
    prompts = [enc.encode(format_prompt(r["instruction"], r["input"])) for r in records]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out = []
    for start in range(0, len(order), BATCH_SIZE):
        ids, mask = _left_pad([prompts[i] for i in order[start : start + BATCH_SIZE]], "cpu")
        out.append({"ids": ids.tolist(), "mask": mask.tolist()})
    return out


def _stop_token(rows: list[list[int]], new_tokens: int) -> int | None:
    """Of the 20 tokens the rows emit most, the one whose first appearance is, at the median row, nearest the middle
    of the budget: rows then stop at spread-out steps. None when no token does that (a random model that repeats
    one token per row): rows then run to the budget."""
    from collections import Counter

    def median_first(token: int) -> float:
        return C.median(row.index(token) if token in row else new_tokens for row in rows)

    candidates = [t for t, _ in Counter(t for row in rows for t in row).most_common(20)]
    spread = [t for t in candidates if 0 < median_first(t) < new_tokens]
    return min(spread, key=lambda t: abs(median_first(t) - new_tokens / 2)) if spread else None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "medium"])
    parser.add_argument("--case", nargs="+", default=["single", "batched"], choices=["single", "batched"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens of the single case")
    parser.add_argument("--prompts", type=int, default=100, help="Alpaca prompts of the batched case")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--inner", type=int, default=3, help="timed calls per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="append results as JSON lines to this file")
    return parser.parse_args()


def compare(folder: Path, size: str, case: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both sides on one (size, case), alternating fresh processes: the table row and the JSON record."""
    batches = _batches_single(args.prompt_len) if case == "single" else _batches_judge(args.prompts)
    spec = {
        "folder": str(folder),
        "batches": batches,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "inner": args.inner,
        "eos": None,
    }
    if case == "batched":  # a first pass picks an end-of-sequence id the random model does emit
        first = C.run_worker(__file__, {**spec, "side": "ours", "inner": 1})["rows"]
        spec["eos"] = _stop_token(first, args.new_tokens)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "peer": []}
    for _ in range(args.reps):
        for side in ("ours", "peer"):
            runs[side].append(C.run_worker(__file__, {**spec, "side": side}))
    same = runs["ours"][0]["rows"] == runs["peer"][0]["rows"]
    med = {s: C.median(r["seconds"] for r in rs) for s, rs in runs.items()}
    n_new = runs["ours"][0]["new_tokens"]
    speedup = med["peer"] / med["ours"]
    row = {
        "size": size,
        "case": case,
        "rows": sum(len(b["ids"]) for b in batches),
        "new tokens": n_new,
        "ours ms/token": f"{1e3 * med['ours'] / n_new:.2f}",
        "peer ms/token": f"{1e3 * med['peer'] / n_new:.2f}",
        "ours s": f"{med['ours']:.2f}",
        "peer s": f"{med['peer']:.2f}",
        "speed-up": f"{speedup:.2f}x",
        "same tokens": "yes" if same else "NO",
    }
    for rs in runs.values():
        for r in rs:
            r.pop("rows")
    record = {"bench": "generate", "size": size, "case": case, "new_tokens": n_new, "eos": spec["eos"]}
    record.update(speedup=speedup, same_tokens=same, median_s=med, runs=runs, reps=args.reps)
    print(f"  {size} {case}: {speedup:.2f}x", file=sys.stderr, flush=True)
    return row, record


def main() -> None:
    args = parse_args()
    C.offline_env()
    import torch

    from model import GPT, GPTConfig
    from model.checkpoint import export_hf

    info = C.machine(args.threads)
    print(
        f"# {info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB, torch {info['torch']}, "
        f"transformers {info.get('transformers')}, {args.threads} threads, allocator {info['allocator']}, "
        f"load {info['load_avg']}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="lorasweep-bench-"))
    rows, records = [], []
    for size in args.size:
        torch.manual_seed(0)
        folder = export_hf(GPT(GPTConfig.from_preset(size)), tmp / size)
        for case in args.case:
            row, record = compare(folder, size, case, args)
            rows.append(row)
            records.append({**record, "machine": info, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    C.finish(rows, records, args, f"medians of {args.reps} alternating repetitions x {args.inner} calls")


if __name__ == "__main__":
    C.main_or_worker(sys.argv, worker, main)
