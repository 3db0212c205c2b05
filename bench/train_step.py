"""Training-step speed and memory: lorasweep's GPT-2 against transformers + PEFT, side by side.

    python bench/train_step.py                                  # GPT-2 small widths, full and LoRA, both cases
    python bench/train_step.py --size tiny small medium
    python bench/train_step.py --case alpaca                    # only the Alpaca batches (loss on responses)
    python bench/train_step.py --size tiny --steps 2 --warmup 1 --reps 1   # the CI smoke run
    python bench/train_step.py --json bench.jsonl               # also append the results as JSON lines

As nanoGPT's bench.py: random weights of GPT-2's shapes (the same weights on both sides: one random GPT-2 saved in
Hugging Face's format, loaded by each), fp32, AdamW, dropout 0,
gradient clipping at 1.0 (the HF Trainer's default and ours). The peer is `GPT2LMHeadModel` (SDPA attention), with
`peft` LoRA r=8 on c_attn/c_proj/c_fc, stepped as the HF Trainer does: `loss.backward()`, clip, `step()`,
`zero_grad()`, with torch's fused AdamW (the Trainer's default optimizer). Ours is `tasks.train.loop.train_step` on
`model.GPT` with `model.lora.apply_lora`, as a trial runs it.

Cases: `lm` = batch x seq random tokens, every position a target; `alpaca` = real Alpaca rows from the shared
sample (prompt masked, right-padded, length-bucketed as the trainer batches them), the same batches on both sides.

Each (side, repetition) is a fresh process, ours and the peer alternating, so the machine's load falls on both and
each side's peak RSS (VmHWM, whole process) is its own. MFU = useful model FLOPs / time / the fp32 matmul peak
(2048^3) each process measures right before its timed steps; 6 FLOPs per trained and 4 per frozen parameter per
token (nanoGPT's estimate_mfu; LoRA's frozen weights need no weight gradient), plus attention; the LM head counts
only at tokens that carry a loss. Both sides' first-step loss on the same weights and batch must agree (`same_loss`):
otherwise they would not be computing the same thing, and their speeds would not compare.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

from common.allocator import GLIBC_ENV

LORA_RANK, LORA_ALPHA = 8, 16
SAME_LOSS_ATOL = 1e-4  # fp32 on the same weights: the two implementations round differently, by ~1e-6
MALLOC_MODES: dict[str, dict[str, dict[str, str]]] = {
    "default": {"ours": {}, "peer": {}},
    "tuned-ours": {"ours": {"LORASWEEP_MALLOC": "tuned"}, "peer": {}},
    "tuned-both": {"ours": GLIBC_ENV, "peer": GLIBC_ENV},  # common/allocator.py's settings, set at start-up
}


# ------------------------------------------------------------------------------------------------ the worker


def _batches(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    if spec["case"] == "alpaca":
        return torch.load(spec["batches_file"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (spec["batch"], spec["seq"]), generator=g)
    labels = ids.clone()
    labels[:, 0] = -100  # nothing predicts the first token (as tasks.batching.collate)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}]


def _ours(spec: dict[str, Any]) -> Any:
    """A closure running one of our optimizer steps on a batch, as a trial does."""
    import torch

    from common.allocator import maybe_tune_malloc
    from model import apply_lora, from_pretrained
    from tasks.alpaca import Alpaca
    from tasks.train.loop import train_step
    from tasks.train.optim import build_optimizer
    from tasks.train.runtime import Runtime

    maybe_tune_malloc()  # as tasks.train.build.build_model: only with LORASWEEP_MALLOC=tuned
    model = from_pretrained(spec["weights"])
    if spec["mode"] == "lora":
        apply_lora(model, rank=LORA_RANK, alpha=LORA_ALPHA, dropout=0.0)
    model.train()
    runtime = Runtime(torch.device("cpu"), "fp32")
    optimizer = build_optimizer(model, {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01}, runtime.device)
    task = Alpaca()  # compute_loss = model.lm_loss, mean over label tokens

    def step(batch: dict[str, Any], i: int) -> float:
        return train_step(model, task, [batch], optimizer, runtime, step=i, lr=1e-4, grad_clip=1.0)

    return step, model


def peer_config(size: str) -> Any:
    from transformers import GPT2Config

    from model.gpt2 import PRESETS

    return GPT2Config(
        **PRESETS[size], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
        loss_type="ForCausalLM",
    )  # fmt: skip


def shared_weights(size: str, out: Path) -> Path:
    """One random GPT-2 of `size` in Hugging Face's format (config.json + model.safetensors): both sides load it."""
    C.quiet_peer()
    import torch
    from transformers import GPT2LMHeadModel

    if not (out / "model.safetensors").is_file():
        torch.manual_seed(0)
        GPT2LMHeadModel(peer_config(size)).save_pretrained(out, safe_serialization=True)
    return out


def _peer(spec: dict[str, Any]) -> Any:
    """The same step with transformers + peft, written as the HF Trainer runs it."""
    C.quiet_peer()
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(spec["weights"], config=peer_config(spec["size"]))
    if spec["mode"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=LORA_RANK,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.0,
            target_modules=["c_attn", "c_proj", "c_fc"],
            fan_in_fan_out=True,
        )
        model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-4, fused=True)

    def step(batch: dict[str, Any], i: int) -> float:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    return step, model


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one side, warm up, then time `steps` optimizer steps; prints nothing but the result."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    batches = _batches(spec)
    step, _ = (_ours if spec["side"] == "ours" else _peer)(spec)
    first_loss = None
    for i in range(spec["warmup"]):
        loss = step(batches[i % len(batches)], i)
        first_loss = loss if first_loss is None else first_loss
    peak = C.matmul_peak(spec["threads"])  # this process's own peak, measured just before its steps
    times, tokens, faults, losses, flops = [], 0, 0, [], 0.0
    for i in range(spec["steps"]):
        batch = batches[i % len(batches)]
        f0, t0 = C.minor_faults(), time.perf_counter()
        losses.append(step(batch, spec["warmup"] + i))
        first_loss = losses[0] if first_loss is None else first_loss
        times.append(time.perf_counter() - t0)
        faults += C.minor_faults() - f0
        tokens += int(batch["attention_mask"].sum())
        flops += spec["flops_per_batch"][i % len(batches)]
    return {
        "mfu": flops / sum(times) / (peak * 1e9),
        "matmul_peak_gflops": peak,
        "tokens_per_s": tokens / sum(times),
        "step_s": C.median(times),
        "faults_per_step": faults / len(times),
        "peak_rss_mb": C.peak_rss_mb(),
        "first_loss": first_loss,
        "last_loss": losses[-1],
    }


# ------------------------------------------------------------------------------------------------ FLOPs


def flops_per_batch(size: str, mode: str, batches: list[dict[str, Any]]) -> list[float]:
    """Useful model FLOPs of a step on each batch: body at real tokens, head at loss tokens."""
    from model.gpt2 import PRESETS

    s = PRESETS[size]
    L, E, V = s["n_layer"], s["n_embd"], 50257
    body = L * 12 * E * E + L * 13 * E + 2 * E  # blocks' matrices, biases and LayerNorms, ln_f
    lora = L * LORA_RANK * ((E + 3 * E) + (E + E) + (E + 4 * E) + (4 * E + E))  # A and B of the four targets
    head = V * E  # tied with wte: the head's matmul is the only compute the embedding costs
    per_tok_body = 6 * body if mode == "full" else 4 * body + 6 * lora
    per_tok_head = 6 * head if mode == "full" else 4 * head
    out = []
    for b in batches:
        mask = b["attention_mask"]
        T = mask.shape[1]
        real = int(mask.sum())
        n_loss = int((b["labels"][:, 1:] != -100).sum())
        out.append(real * (per_tok_body + 12 * L * E * T) + n_loss * per_tok_head)  # 12·L·E·T: attention (nanoGPT)
    return out


# ------------------------------------------------------------------------------------------------ the driver


def alpaca_batches(batch_size: int, n: int, out: Path) -> Path:
    """`n` Alpaca training batches from the shared sample, as the trainer makes them; saved for the workers."""
    import torch

    from tasks.alpaca import Alpaca
    from tasks.batching import iterate_batches

    sample = C.shared_dir() / "data" / "alpaca" / "alpaca_sample.json"
    task = Alpaca({"path": str(sample), "train_size": 2000, "val_size": 200, "test_size": 100})
    data = task.load(task.settings, n_positions=1024, cache_dir=out.parent / "cache")
    batches = iterate_batches(data.train, batch_size, shuffle=True, seed=0, bucket=32)  # trainer defaults
    chosen = [b for _, b in zip(range(n), batches, strict=False)]
    torch.save(chosen, out)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["small"], choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--mode", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--case", nargs="+", default=["lm", "alpaca"], choices=["lm", "alpaca"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--alpaca-batches", type=int, default=6, help="distinct Alpaca batches, cycled")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per repetition")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--malloc",
        default="default",
        choices=list(MALLOC_MODES),
        help="glibc settings: default; tuned-ours (LORASWEEP_MALLOC=tuned, ours only); tuned-both (same via env)",
    )
    parser.add_argument("--json", help="append results as JSON lines to this file")
    return parser.parse_args()


def compare(spec: dict[str, Any], batches: Any, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both sides on one (case, size, mode), alternating fresh processes: the table row and the JSON record."""
    from_worker = _batches(spec) if batches is None else batches
    spec["flops_per_batch"] = flops_per_batch(spec["size"], spec["mode"], from_worker)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "peer": []}
    for _ in range(args.reps):
        for side in ("ours", "peer"):
            env = MALLOC_MODES[args.malloc][side]
            runs[side].append(C.run_worker(__file__, {**spec, "side": side}, env=env))
    losses = ("first_loss", "last_loss")
    med = {side: {k: C.median(r[k] for r in rs) for k in rs[0] if k not in losses} for side, rs in runs.items()}
    # the same weights and first batch: both sides' first loss agrees to fp32 rounding, or they differ in what they do
    first = {side: rs[0]["first_loss"] for side, rs in runs.items()}
    same_loss = abs(first["ours"] - first["peer"]) <= SAME_LOSS_ATOL
    mfu = {s: m["mfu"] for s, m in med.items()}
    speedup = med["ours"]["tokens_per_s"] / med["peer"]["tokens_per_s"]
    rss = med["ours"]["peak_rss_mb"] / med["peer"]["peak_rss_mb"]
    case, size, mode = spec["case"], spec["size"], spec["mode"]
    row = {
        "case": case,
        "size": size,
        "mode": mode,
        "malloc": args.malloc,
        "ours tok/s": f"{med['ours']['tokens_per_s']:.0f}",
        "peer tok/s": f"{med['peer']['tokens_per_s']:.0f}",
        "speed-up": f"{speedup:.2f}x",
        "ours MFU": f"{mfu['ours']:.2f}",
        "peer MFU": f"{mfu['peer']:.2f}",
        "ours RSS MB": f"{med['ours']['peak_rss_mb']:.0f}",
        "peer RSS MB": f"{med['peer']['peak_rss_mb']:.0f}",
        "RSS ratio": f"{rss:.2f}",
        "faults/step ours/peer": "{:.0f}/{:.0f}".format(med["ours"]["faults_per_step"], med["peer"]["faults_per_step"]),
        "same loss": "yes" if same_loss else f"NO ({first['ours']:.6f} vs {first['peer']:.6f})",
    }
    record = {
        "bench": "train_step",
        "malloc": args.malloc,
        "case": case,
        "size": size,
        "mode": mode,
        "batch": args.batch,
        "seq": args.seq if case == "lm" else None,
        "steps": spec["steps"],
        "reps": args.reps,
        "speedup": speedup,
        "first_loss": first,
        "same_loss": same_loss,
        "rss_ratio": rss,
        "mfu": mfu,
        "median": med,
        "runs": runs,
    }
    print(f"  {case} {size} {mode}: {speedup:.2f}x", file=sys.stderr, flush=True)
    return row, record


def main() -> None:
    args = parse_args()
    C.offline_env()
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="lorasweep-bench-"))
    peak = C.matmul_peak(args.threads)
    info = C.machine(args.threads)
    print(
        f"# {info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB, torch {info['torch']}, "
        f"transformers {info.get('transformers')}, peft {info.get('peft')}, {args.threads} threads, "
        f"allocator {info['allocator']} ({args.malloc}), load {info['load_avg']}; "
        f"fp32 matmul peak now {peak:.0f} GFLOP/s"
    )
    rows, records = [], []
    for case in args.case:
        spec_base: dict[str, Any] = {"case": case, "batch": args.batch, "seq": args.seq, "threads": args.threads}
        if case == "alpaca":
            spec_base["batches_file"] = str(alpaca_batches(args.batch, args.alpaca_batches, tmp / "alpaca.pt"))
            batches = torch.load(spec_base["batches_file"])
            steps = max(args.steps, len(batches))  # every distinct batch at least once
        else:
            batches, steps = None, args.steps
        for size in args.size:
            for mode in args.mode:
                weights = str(shared_weights(size, tmp / f"weights-{size}"))
                spec = {
                    **spec_base,
                    "size": size,
                    "mode": mode,
                    "steps": steps,
                    "warmup": args.warmup,
                    "weights": weights,
                }
                row, record = compare(spec, batches, args)
                rows.append(row)
                now = time.strftime("%Y-%m-%dT%H:%M:%S")
                records.append({**record, "matmul_peak_gflops": peak, "machine": info, "time": now})
    C.finish(rows, records, args, f"medians of {args.reps} alternating repetitions per side")


if __name__ == "__main__":
    C.main_or_worker(sys.argv, worker, main)
