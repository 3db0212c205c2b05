"""The GPU check of issue [8]: GPT-2 medium full fine-tuning, seq 512, batch 4, bf16 autocast, fused AdamW, SDPA flash.

    python bench/gpu_check.py                 # ours; prints tokens/s, MFU vs the measured bf16 peak, peak memory
    python bench/gpu_check.py --peer          # also transformers' GPT2LMHeadModel the same way, for comparison
    python bench/gpu_check.py --json bench.jsonl

Target: peak CUDA memory (torch.cuda.max_memory_allocated) under 12 GB; the exit code is 1 when it is not met (run
time and results: BENCHMARKS.md). Random weights of GPT-2 medium's shape (no download). MFU = 6 N + attention FLOPs
per token (nanoGPT's estimate_mfu) over the bf16 matmul rate measured here (8192^3, the denominator), and over the
card's nominal dense bf16 peak for reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import _common as C

NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}
LIMIT_GB = 12.0


def bf16_peak() -> float:
    """Median TFLOP/s of an 8192^3 bf16 matmul."""
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / C.median(times) / 1e12


def _ours(size: str, device: Any, batch: dict[str, Any]) -> tuple[Any, Callable[[int], None], bool]:
    """Our model and one training step, as a trial runs it: `train_step`, fused AdamW, bf16 autocast."""
    from model import GPT, GPTConfig
    from tasks.alpaca import Alpaca
    from tasks.train.loop import train_step
    from tasks.train.optim import build_optimizer
    from tasks.train.runtime import Runtime

    model = GPT(GPTConfig.from_preset(size)).to(device).train()
    runtime = Runtime(device, "bf16")
    opt = build_optimizer(model, {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01}, device)  # fused on CUDA
    task = Alpaca()

    def step(i: int) -> None:
        train_step(model, task, [batch], opt, runtime, step=i, lr=1e-4, grad_clip=1.0)

    return model, step, bool(opt.defaults.get("fused"))


def _peer(size: str, device: Any, batch: dict[str, Any]) -> tuple[Any, Callable[[int], None], bool]:
    """transformers' GPT2LMHeadModel stepped as the HF Trainer does, with bf16 autocast."""
    import torch

    C.quiet_peer()
    from transformers import GPT2Config, GPT2LMHeadModel

    from model.gpt2 import PRESETS

    cuda = device.type == "cuda"
    config = GPT2Config(**PRESETS[size], resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, attn_implementation="sdpa")
    model = GPT2LMHeadModel(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=cuda)

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return model, step, cuda


def run(side: str, steps: int, warmup: int, batch: int, seq: int, size: str = "medium") -> dict[str, Any]:
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")  # cpu: only the --cpu-smoke logic check
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (batch, seq), generator=g).to(device)
    labels = ids.clone()
    labels[:, 0] = -100
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    model, step, fused = (_ours if side == "ours" else _peer)(size, device, batch_)
    n_params = sum(p.numel() for p in model.parameters())
    sync = torch.cuda.synchronize if cuda else lambda: None
    # flash only: fails loudly if SDPA cannot use it here
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION) if cuda else contextlib.nullcontext():
        for i in range(warmup):
            step(i)
        sync()
        t = time.perf_counter()
        for i in range(steps):
            step(warmup + i)
        sync()
        dt = (time.perf_counter() - t) / steps
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if cuda else C.peak_rss_mb() / 1024
    return {
        "side": side,
        "step_s": dt,
        "tokens_per_s": batch * seq / dt,
        "peak_gb": peak_gb,
        "params": n_params,
        "fused_adamw": bool(fused),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--peer", action="store_true", help="also run transformers' GPT2LMHeadModel")
    parser.add_argument("--json", help="append results as JSON lines to this file")
    parser.add_argument("--cpu-smoke", action="store_true", help="check the script's logic on CPU (tiny, 1 step)")
    return parser.parse_args()


def print_table(results: list[dict[str, Any]]) -> None:
    rows = [
        {
            "side": r["side"],
            "tokens/s": f"{r['tokens_per_s']:.0f}",
            "step ms": f"{1e3 * r['step_s']:.1f}",
            "MFU (measured peak)": f"{r['mfu_measured_peak']:.2f}",
            "MFU (nominal)": f"{r['mfu_nominal_peak']:.2f}" if r["mfu_nominal_peak"] else "-",
            "peak GB": f"{r['peak_gb']:.2f}",
            "fused AdamW": str(r["fused_adamw"]),
        }
        for r in results
    ]
    print(C.table(rows, list(rows[0])))


def main() -> int:
    args = parse_args()
    import torch

    if args.cpu_smoke:  # no timing, no target: both sides run one bf16-autocast step of the tiny model
        for side in ("ours", "peer"):
            print(run(side, 1, 1, 2, 32, size="tiny"))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (it was not run)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    peak = bf16_peak()
    nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
    L, E = 24, 1024  # GPT-2 medium
    results = []
    for side in ("ours", "peer") if args.peer else ("ours",):
        r = run(side, args.steps, args.warmup, args.batch, args.seq)
        flops_per_token = 6 * r["params"] + 12 * L * E * args.seq  # nanoGPT: 6N + 12·L·H·Q·T (H·Q = E)
        r["mfu_measured_peak"] = flops_per_token * r["tokens_per_s"] / (peak * 1e12)
        r["mfu_nominal_peak"] = flops_per_token * r["tokens_per_s"] / (nominal * 1e12) if nominal else None
        results.append(r)
    print(f"# {name}, torch {torch.__version__}, bf16 matmul peak measured {peak:.0f} TFLOP/s (nominal {nominal})")
    print_table(results)
    ok = results[0]["peak_gb"] < LIMIT_GB
    print(
        f"# GPT-2 medium full fine-tuning, seq {args.seq} x batch {args.batch}, bf16 autocast, SDPA flash: peak "
        f"{results[0]['peak_gb']:.2f} GB {'<' if ok else '>='} {LIMIT_GB} GB"
    )
    record = {"bench": "gpu_check", "device": name, "bf16_peak_tflops": peak, "results": results}
    C.append_json(args.json, [{**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
