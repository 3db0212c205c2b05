"""Autoregressive generation with a preallocated KV cache, left padding and per-row stopping.

nanoGPT's loop (crop → temperature → top-k → sample) plus what batched evaluation needs: the prompt runs once, then
one token per step through a cache allocated once for the whole call; rows that emit `eos_token_id` or end with a
stop sequence leave the batch (their cache rows are dropped), and the call returns when every row is done. On CPU
with a few rows the decode steps run through `model.decode.decode_layout`'s weight copies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from model.decode import decode_layout
from model.gpt2 import GPT, padding_mask

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


def _last_logits(gpt: GPT, x: torch.Tensor) -> torch.Tensor:
    """(B, V) logits at the last position only."""
    return gpt.lm_head(gpt.transformer.ln_f(x[:, -1]))


class _Rows:
    """The rows of one `generate` call: the output buffer, which rows still run, and the KV cache when used."""

    def __init__(
        self, gpt: GPT, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, total: int, pad: int
    ) -> None:
        B, T = input_ids.shape
        device = input_ids.device
        self.gpt, self.T = gpt, T
        self.out = torch.full((B, total), pad, dtype=torch.long, device=device)
        self.out[:, :T] = input_ids
        self.padded = attention_mask is not None and not bool(attention_mask.all())
        self.keys = torch.ones(B, total, dtype=torch.bool, device=device)  # which positions hold real tokens
        if self.padded:
            self.keys[:, :T] = attention_mask.bool()
        self.active = torch.arange(B, device=device)  # rows of `out` still generating
        self.cache: torch.Tensor | None = None
        self.next_pos: torch.Tensor | None = None  # (B,) the position of each row's next token (with the cache)

    def prefill(self, use_cache: bool) -> torch.Tensor:
        """The prompt through the model; with `use_cache`, its keys and values into a cache for the whole call."""
        gpt, cfg = self.gpt, self.gpt.config
        ids = self.out[:, : self.T]
        if not use_cache:
            return gpt.hidden_states(ids, self.keys[:, : self.T].long())
        B, total, hs = ids.shape[0], self.out.shape[1], cfg.n_embd // cfg.n_head
        param = gpt.transformer.wte.weight
        dtype = param.dtype
        if torch.is_autocast_enabled(param.device.type):  # k and v come out in the autocast dtype
            dtype = torch.get_autocast_dtype(param.device.type)
        # allocated once: (layer, k|v, B, nh, T_max, hs)
        self.cache = torch.empty(cfg.n_layer, 2, B, cfg.n_head, total, hs, dtype=dtype, device=param.device)
        if self.padded:
            mask, positions = padding_mask(self.keys[:, : self.T].long())
            self.next_pos = self.keys[:, : self.T].long().sum(-1)
        else:
            mask, positions = None, torch.arange(self.T, device=ids.device)
            self.next_pos = torch.full((B,), self.T, dtype=torch.long, device=ids.device)
        x = gpt.transformer.wte(ids) + gpt.transformer.wpe(positions)
        for i, block in enumerate(gpt.transformer.h):
            x = block(x, mask, mask is None, self.cache[i], 0)
        return x

    def finish(self, done: torch.Tensor) -> None:
        """Drop the rows marked `done` (B_active,) from the batch and the cache."""
        keep = ~done
        self.active = self.active[keep]
        if self.cache is not None:
            self.cache, self.next_pos = self.cache[:, :, keep], self.next_pos[keep]

    def step(self, token: torch.Tensor, cur: int) -> torch.Tensor:
        """Hidden states after feeding each active row's `token`, written at position `cur`."""
        gpt = self.gpt
        if self.cache is None:
            return gpt.hidden_states(self.out[self.active, : cur + 1], self.keys[self.active, : cur + 1].long())
        x = gpt.transformer.wte(token[:, None]) + gpt.transformer.wpe(self.next_pos[:, None])
        # one query over every cached key: only padding needs a mask
        step_mask = self.keys[self.active, None, None, : cur + 1] if self.padded else None
        for i, block in enumerate(gpt.transformer.h):
            x = block(x, step_mask, False, self.cache[i], cur)
        self.next_pos += 1
        return x


def _finished(
    rows: _Rows, token: torch.Tensor, cur: int, n: int, eos_token_id: int | None, stops: list[torch.Tensor]
) -> torch.Tensor | None:
    """Which active rows just ended (eos, or their new tokens end with a stop sequence); None without stop rules."""
    done = token == eos_token_id if eos_token_id is not None else None
    for stop in stops:
        if len(stop) <= n:
            hit = (rows.out[rows.active, cur + 1 - len(stop) : cur + 1] == stop).all(-1)
            done = hit if done is None else done | hit
    return done


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
        gpt: the model (a `model.GPT`, LoRA or not); put in eval mode for the call, its mode restored after.
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
    B, T = input_ids.shape
    vocab = gpt.config.vocab_size
    pad = pad_token_id if pad_token_id is not None else eos_token_id if eos_token_id is not None else vocab - 1
    rows = _Rows(gpt, input_ids, attention_mask, T + max_new_tokens, pad)
    stops = [torch.tensor(s, dtype=torch.long, device=input_ids.device) for s in stop_sequences or ()]
    was_training = gpt.training
    gpt.eval()
    n = 0
    try:
        x = rows.prefill(use_cache)
        with decode_layout(gpt, B) if use_cache and max_new_tokens > 1 else nullcontext():
            logits = _last_logits(gpt, x)
            for step in range(max_new_tokens):
                token = sample_next(logits, temperature, top_k, top_p, generator)  # (b,)
                cur = T + step
                rows.out[rows.active, cur] = token
                n = step + 1
                if n == max_new_tokens:
                    break
                done = _finished(rows, token, cur, n, eos_token_id, stops)
                if done is not None and bool(done.any()):
                    rows.finish(done)
                    token = token[~done]
                    if rows.active.numel() == 0:
                        break
                logits = _last_logits(gpt, rows.step(token, cur))
    finally:
        gpt.train(was_training)
    return rows.out[:, : T + n]
