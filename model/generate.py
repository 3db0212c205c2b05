"""Autoregressive generation with a preallocated KV cache, left padding and per-row stopping.

nanoGPT's loop (crop → temperature → top-k → sample) plus what batched evaluation needs: the prompt runs once, then
one token per step through a cache allocated once for the whole call; rows that emit `eos_token_id` or end with a
stop sequence leave the batch (their cache rows are dropped), and the call returns when every row is done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from model.gpt2 import _padding_mask

if TYPE_CHECKING:
    from model.gpt2 import GPT

logger = logging.getLogger(__name__)


def _check_args(
    gpt: GPT,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_token_id: int | None,
    attention_mask: torch.Tensor | None,
    stop_sequences: Sequence[Sequence[int]] | None,
) -> None:
    vocab = gpt.config.vocab_size
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(
            f"`input_ids` must be a non-empty 2-D (batch, time) tensor, but got shape={tuple(input_ids.shape)}"
        )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be an integer >= 1, but got max_new_tokens={max_new_tokens!r}")
    total = input_ids.shape[1] + max_new_tokens
    if total > gpt.config.n_positions:
        raise ValueError(
            f"prompt length + max_new_tokens must be <= n_positions={gpt.config.n_positions}, but got "
            f"{input_ids.shape[1]} + {max_new_tokens} = {total}"
        )
    if temperature < 0:
        raise ValueError(f"`temperature` must be >= 0 (0 = greedy), but got temperature={temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"`top_k` must be None or an integer >= 1, but got top_k={top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"`top_p` must be None or in (0, 1], but got top_p={top_p!r}")
    if eos_token_id is not None and not 0 <= eos_token_id < vocab:
        raise ValueError(f"`eos_token_id` must be in [0, {vocab}), but got eos_token_id={eos_token_id!r}")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                "`attention_mask.shape == input_ids.shape` must hold, but got "
                f"attention_mask.shape={tuple(attention_mask.shape)}, input_ids.shape={tuple(input_ids.shape)}"
            )
        if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise ValueError("generate needs left padding (zeros before the prompt), but got a right-padded row")
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("every row must hold at least one prompt token, but got an all-padding row")
    for seq in stop_sequences or ():
        if len(seq) == 0 or not all(isinstance(t, int) and 0 <= t < vocab for t in seq):
            raise ValueError(
                f"`stop_sequences` must be non-empty lists of token ids in [0, {vocab}), but got {list(seq)!r}"
            )


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): argmax at temperature 0, else top-k/top-p sampling."""
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the ones ranked above it already hold top_p of the mass (the first always stays)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def _last_logits(gpt: GPT, x: torch.Tensor, head_t: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) logits at the last position only; through `head_t` (C, V) when given."""
    h = gpt.transformer.ln_f(x[:, -1])
    return h @ head_t if head_t is not None else gpt.lm_head(h)


class _DecodeLinear:
    """y = x W^T + b through a stored (in, out) copy of W: for the few-row products of decoding on CPU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight_t = weight.detach().t().contiguous()  # (in, out)
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = flat @ self.weight_t if self.bias is None else torch.addmm(self.bias, flat, self.weight_t)
        return y.view(*x.shape[:-1], y.shape[-1])


def _decode_linears(gpt: GPT, batch: int) -> list[dict[str, Any]] | None:
    """Per block, the linears that decode faster from an (in, out) copy (LoRA merged in); None off CPU or for
    more than 4 rows, where the products are matrix-matrix and the module's layout does as well.

    A decoding step multiplies one row per sequence by every weight: MKL streams x @ W with W stored (in, out)
    ~1.5x faster than F.linear's (out, in) when out >= in (c_attn, attn c_proj, c_fc; measured in
    bench/generate.py), and a merged LoRA weight skips the adapter's two extra products. mlp.c_proj (out < in) is
    faster as it is and keeps its module. The copies live for one call: memory grows by those weights meanwhile.
    """
    from model.lora import TARGETS, LoRALinear

    if gpt.transformer.wte.weight.device.type != "cpu" or batch > 4 or gpt.config.n_embd < 256:
        return None  # (tiny's blocks fit in cache: their products are bound by dispatch, not memory)
    out = []
    for block in gpt.transformer.h:
        fast: dict[str, Any] = {}
        for name, path in TARGETS.items():
            module = block.get_submodule(path)
            if isinstance(module, LoRALinear):
                weight = module.weight if module.merged else module.weight + module.delta_weight()
                in_dim, out_dim = module.in_dim, module.out_dim
            elif isinstance(module, torch.nn.Linear):
                weight, in_dim, out_dim = module.weight, module.in_features, module.out_features
            else:
                fast[name] = module
                continue
            if out_dim >= in_dim:
                fast[name] = _DecodeLinear(weight, module.bias)
            elif isinstance(module, LoRALinear) and not module.merged:
                fast[name] = _MergedLinear(weight, module.bias)
            else:
                fast[name] = module
        out.append(fast)
    return out


class _MergedLinear:
    """F.linear with a merged LoRA weight in the module's own (out, in) layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def _decode_head(gpt: GPT, batch: int) -> torch.Tensor | None:
    """A (C, V) copy of the LM head for few-row decoding on CPU, else None.

    With one or a few rows the head is a matrix-vector product that reads all of its V x C weights per token; MKL
    streams a row vector times a (C, V) matrix ~2x faster than F.linear's (V, C) layout (bench/generate.py), which
    pays for the copy (one extra head, 154 MB for GPT-2) within a few tokens.
    """
    w = gpt.lm_head.weight
    if w.device.type != "cpu" or batch > 4:
        return None
    return w.detach().t().contiguous()


@torch.inference_mode()
def generate(
    gpt: GPT,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    stop_sequences: Sequence[Sequence[int]] | None = None,
    *,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prompt + continuation, (B, T + n) with n <= max_new_tokens the steps actually run.

    Args:
        input_ids: prompts (B, T); batched prompts are left-padded, with `attention_mask` marking real tokens.
        max_new_tokens: the most tokens to add to each row.
        temperature: 0 = greedy; otherwise logits / temperature, then `top_k`/`top_p` filtering and sampling.
        eos_token_id: a row that emits it is finished (the token is kept).
        stop_sequences: token-id lists; a row whose generated tokens end with one is finished (the sequence is
            kept). Only generated tokens are matched, never the prompt.
        pad_token_id: fills a finished row's remaining positions; default `eos_token_id`, else the vocabulary's
            last id (GPT-2's <|endoftext|>).
        use_cache: False recomputes the whole sequence each step (a reference for tests; same tokens).
        generator: a `torch.Generator` for reproducible sampling.
    """
    _check_args(gpt, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, attention_mask, stop_sequences)
    cfg = gpt.config
    B, T = input_ids.shape
    device = input_ids.device
    total = T + max_new_tokens
    pad = pad_token_id if pad_token_id is not None else eos_token_id if eos_token_id is not None else cfg.vocab_size - 1
    out = torch.full((B, total), pad, dtype=torch.long, device=device)
    out[:, :T] = input_ids
    padded = attention_mask is not None and not bool(attention_mask.all())
    keys = torch.ones(B, total, dtype=torch.bool, device=device)  # which cache positions hold real tokens
    if padded:
        keys[:, :T] = attention_mask.bool()
    stops = [torch.tensor(s, dtype=torch.long, device=device) for s in stop_sequences or ()]
    active = torch.arange(B, device=device)  # rows of `out` still generating
    was_training = gpt.training
    gpt.eval()
    try:
        if use_cache:
            hs = cfg.n_embd // cfg.n_head
            param = gpt.transformer.wte.weight
            dtype = param.dtype
            if torch.is_autocast_enabled(param.device.type):  # k and v come out in the autocast dtype
                dtype = torch.get_autocast_dtype(param.device.type)
            # allocated once: (layer, k|v, B, nh, T_max, hs)
            cache = torch.empty(cfg.n_layer, 2, B, cfg.n_head, total, hs, dtype=dtype, device=param.device)
            if padded:
                mask, positions = _padding_mask(attention_mask)
                next_pos = attention_mask.long().sum(-1)  # (B,) the position of each row's next token
            else:
                mask, positions = None, torch.arange(T, device=device)
                next_pos = torch.full((B,), T, dtype=torch.long, device=device)
            x = gpt.transformer.wte(input_ids) + gpt.transformer.wpe(positions)
            for i, block in enumerate(gpt.transformer.h):
                x = block(x, mask, mask is None, cache[i], 0)
            head_t = _decode_head(gpt, B) if max_new_tokens > 1 else None
            fast = _decode_linears(gpt, B) if max_new_tokens > 1 else None
            logits = _last_logits(gpt, x, head_t)
        else:
            head_t, fast = None, None
            logits = _last_logits(gpt, gpt.hidden_states(out[:, :T], keys[:, :T].long()))

        n = 0
        for step in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (b,)
            cur = T + step
            out[active, cur] = token
            n = step + 1
            if n == max_new_tokens:
                break
            done = token == eos_token_id if eos_token_id is not None else None
            for stop in stops:
                if len(stop) <= n:
                    hit = (out[active, cur + 1 - len(stop) : cur + 1] == stop).all(-1)
                    done = hit if done is None else done | hit
            if done is not None and bool(done.any()):
                keep = ~done
                active, token = active[keep], token[keep]
                if active.numel() == 0:
                    break
                if use_cache:
                    cache, next_pos = cache[:, :, keep], next_pos[keep]
            if use_cache:
                x = gpt.transformer.wte(token[:, None]) + gpt.transformer.wpe(next_pos[:, None])
                # one query over every cached key: only padding needs a mask
                step_mask = keys[active, None, None, : cur + 1] if padded else None
                for i, block in enumerate(gpt.transformer.h):
                    x = block(x, step_mask, False, cache[i], cur, fast[i] if fast else None)
                next_pos += 1
            else:
                x = gpt.hidden_states(out[active, : cur + 1], keys[active, : cur + 1].long())
            logits = _last_logits(gpt, x, head_t)
    finally:
        gpt.train(was_training)
    return out[:, : T + n]
