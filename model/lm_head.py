"""The tied LM head and its cross-entropy, as `GPT.lm_loss` uses them: one small interface, `TiedHeadLoss`.

`F.cross_entropy(h @ W.T, t)` makes, for N loss positions and a 50,257-wide vocabulary, the logits, their
log-softmax, the gradient of each and a float copy: several (N, vocab) tensors, freed and refaulted every step. In
eager fp32/fp64 the head and its loss run fused instead: rows go through in chunks of at most `CHUNK_ROWS`, logits
land in one reused workspace, are turned into probabilities in place and, when gradients are wanted, into
dloss/dlogits in place, which gives both gradients right away (Liger-Kernel's fused linear cross-entropy, Hsu et al.
2024); backward only scales them. The tied embedding/head matrix then gets one gradient tensor per step: the head
hands its weight gradient to the embedding's backward (`TiedGrad`), which adds its rows into it. Under autocast or
`torch.compile` the plain ops run (inductor fuses them itself). BENCHMARKS.md has the measured effect of each part.

The workspace rows are padded to a multiple of 64 floats (GEMM writes aligned rows faster). On CPU it is kept by this
module between calls, one per dtype for the whole process, so the allocator does not hand it back to the kernel and
fault it in again every step; CUDA's caching allocator already reuses memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ROWS = 512  # rows of logits in flight, whatever the batch
_ALIGN = 64
_cpu_workspaces: dict[torch.dtype, torch.Tensor] = {}


class TiedHeadLoss:
    """Next-token NLL through the LM head for one `GPT.lm_loss` call: `embed` the input ids, run the blocks, then
    `loss` on the final hidden states at the loss positions.

    Fused and chunked in eager fp32/fp64; with the tied matrix trainable, its two gradients (head and embedding)
    arrive as one tensor. Otherwise `embed` is the embedding and `loss` is `F.cross_entropy(head(h), targets)`.
    """

    def __init__(self, wte: nn.Embedding, lm_head: nn.Linear) -> None:
        self.wte, self.lm_head = wte, lm_head
        weight = lm_head.weight
        self.fused = (
            weight.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(weight.device.type)
            and not torch.compiler.is_compiling()
        )
        tie = self.fused and torch.is_grad_enabled() and weight.requires_grad and weight is wte.weight
        self._tied = TiedGrad() if tie else None

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, C) of `input_ids`."""
        if self._tied is None:
            return self.wte(input_ids)
        return _TiedEmbedding.apply(input_ids, self.wte.weight, self._tied)

    def loss(self, h: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """NLL of `targets` (N,) under the head applied to final hidden states `h` (N, C); `mean` or `sum`."""
        if not self.fused:
            return F.cross_entropy(self.lm_head(h), targets, reduction=reduction)
        nll = lm_head_nll(h, self.lm_head.weight, targets, tied=self._tied)
        return nll / h.shape[0] if reduction == "mean" else nll


def _workspace(rows: int, vocab: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, vocab) view into an aligned buffer: reused across calls on CPU, fresh on other devices."""
    width = -(-vocab // _ALIGN) * _ALIGN
    if like.device.type != "cpu":
        return torch.empty(rows, width, dtype=like.dtype, device=like.device)[:, :vocab]
    buf = _cpu_workspaces.get(like.dtype)
    if buf is None or buf.shape[0] < rows or buf.shape[1] < width:
        buf = torch.empty(rows, width, dtype=like.dtype)
        _cpu_workspaces[like.dtype] = buf
    return buf[:rows, :vocab]


def _chunks(n: int) -> list[slice]:
    k = -(-n // CHUNK_ROWS)
    size = -(-n // k)  # even chunks: 600 rows -> 300 + 300, not 512 + 88
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _nll_chunk(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row NLL of `logits` (rows, V); leaves softmax probabilities in `logits` and returns their row sums."""
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    top = logits.amax(1, keepdim=True)
    logits.sub_(top).exp_()
    total = logits.sum(1, keepdim=True)
    nll = top.squeeze(1) + total.squeeze(1).log() - target_logit
    return nll, total


class TiedGrad:
    """Carries the head's weight gradient to the tied embedding's backward (autograd runs it last), which adds the
    embedding's rows into it: one gradient tensor for the tied matrix instead of two that autograd allocates, fills
    and adds together."""

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None


class _TiedEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, tied: TiedGrad) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.tied, ctx.weight_shape = tied, weight.shape
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (ids,) = ctx.saved_tensors
        out, ctx.tied.grad = ctx.tied.grad, None
        if out is None:  # the head had no gradient to hand over
            out = grad.new_zeros(ctx.weight_shape)
        out.index_add_(0, ids.reshape(-1), grad.reshape(-1, grad.shape[-1]))
        return None, out, None


class _LMHeadNLL(torch.autograd.Function):
    """sum_i NLL(h_i W^T, t_i); gradients computed in forward, scaled in backward."""

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, tied: TiedGrad | None
    ) -> torch.Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        nll = h.new_zeros(())
        rows = torch.arange(min(CHUNK_ROWS, h.shape[0]), device=h.device)
        for part in _chunks(h.shape[0]):
            hc, tc = h[part], targets[part]
            logits = _workspace(hc.shape[0], weight.shape[0], h)
            torch.mm(hc, weight.t(), out=logits)
            loss, total = _nll_chunk(logits, tc)
            nll += loss.sum()
            logits.div_(total)  # softmax
            logits[rows[: hc.shape[0]], tc] -= 1.0  # d(sum NLL)/d(logits) = softmax - one_hot
            if grad_h is not None:
                torch.mm(logits, weight, out=grad_h[part])
            if grad_w is not None:
                grad_w.addmm_(logits.t(), hc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.used, ctx.tied = False, tied
        return nll

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.used:
            raise RuntimeError("lm_loss's graph was already backpropagated once; call lm_loss again to recompute it")
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        # in place: these tensors belong to this call alone
        grad_h = grad_h.mul_(grad) if grad_h is not None else None
        grad_w = grad_w.mul_(grad) if grad_w is not None else None
        if grad_w is not None and ctx.tied is not None:
            ctx.tied.grad, grad_w = grad_w, None  # the tied embedding's backward returns it
        return grad_h, grad_w, None, None


@torch.no_grad()
def _nll_no_grad(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    nll = h.new_zeros(())
    for part in _chunks(h.shape[0]):
        logits = _workspace(part.stop - part.start, weight.shape[0], h)
        torch.mm(h[part], weight.t(), out=logits)
        nll += _nll_chunk(logits, targets[part])[0].sum()
    return nll


def lm_head_nll(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, tied: TiedGrad | None = None
) -> torch.Tensor:
    """Summed next-token NLL of hidden states `h` (N, C) under the head `weight` (V, C) for `targets` (N,).

    Equal to `F.cross_entropy(h @ weight.T, targets, reduction="sum")` within float rounding. `tied` hands the weight
    gradient to the tied embedding's backward (same graph only). fp32/fp64 without autocast only: `TiedHeadLoss`
    falls back to the plain ops otherwise.
    """
    if h.shape[0] == 0:
        return h.sum() * 0.0  # zero, still attached to the graph
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LMHeadNLL.apply(h, weight, targets, tied)
    return _nll_no_grad(h, weight, targets)
