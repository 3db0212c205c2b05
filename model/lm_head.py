"""The LM head and its cross-entropy in one pass, without (N, vocab) log-probabilities or gradients.

`F.cross_entropy(h @ W.T, t)` makes, for N loss positions and a 50,257-wide vocabulary, the logits, their
log-softmax, the gradient of each and a float copy: several N x V tensors (100 MB each at N = 512), freed and
refaulted every step. Here rows go through in chunks of at most `CHUNK_ROWS`: logits land in one reused workspace,
are turned into probabilities in place, and, when gradients are wanted, into dloss/dlogits in place, which gives
both gradients right away (Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024). Backward only scales them.

The workspace rows are padded to a multiple of 64 floats: MKL's GEMM writes 50,257-wide rows ~1.3x slower than
rows with an aligned stride (measured on AVX-512; bench/train_step.py).
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ROWS = 512  # rows of logits in flight: 512 x 50,304 fp32 = 98 MiB, whatever the batch
_ALIGN = 64


def _workspace(owner: Any, rows: int, vocab: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, vocab) view into a buffer kept on `owner` between calls (CPU only: CUDA's caching allocator
    already reuses memory), so the allocator does not hand it back to the kernel and fault it in every step."""
    width = -(-vocab // _ALIGN) * _ALIGN
    buf = getattr(owner, "_lm_head_workspace", None) if like.device.type == "cpu" else None
    if buf is None or buf.dtype != like.dtype or buf.device != like.device or buf.shape[0] < rows:
        buf = torch.empty(rows, width, dtype=like.dtype, device=like.device)
        if like.device.type == "cpu":
            owner._lm_head_workspace = buf
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
    embedding's rows into it: the tied matrix then gets one gradient tensor per step instead of two that autograd
    allocates (154 MB each for GPT-2), fills and adds together."""

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None


class _TiedEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, tied: TiedGrad) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.tied, ctx.weight_shape = tied, weight.shape
        return torch.nn.functional.embedding(ids, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (ids,) = ctx.saved_tensors
        out, ctx.tied.grad = ctx.tied.grad, None
        if out is None:  # the head had no gradient to hand over
            out = grad.new_zeros(ctx.weight_shape)
        out.index_add_(0, ids.reshape(-1), grad.reshape(-1, grad.shape[-1]))
        return None, out, None


def tied_embedding(ids: torch.Tensor, weight: torch.Tensor, tied: TiedGrad) -> torch.Tensor:
    """`F.embedding(ids, weight)` whose weight gradient also carries the tied head's, handed over through `tied`."""
    return _TiedEmbedding.apply(ids, weight, tied)


class _LMHeadNLL(torch.autograd.Function):
    """sum_i NLL(h_i W^T, t_i); gradients computed in forward, scaled in backward."""

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, owner: Any, tied: TiedGrad | None
    ) -> torch.Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        nll = h.new_zeros(())
        rows = torch.arange(min(CHUNK_ROWS, h.shape[0]), device=h.device)
        for part in _chunks(h.shape[0]):
            hc, tc = h[part], targets[part]
            logits = _workspace(owner, hc.shape[0], weight.shape[0], h)
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
        return grad_h, grad_w, None, None, None


@torch.no_grad()
def _nll_no_grad(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, owner: Any) -> torch.Tensor:
    nll = h.new_zeros(())
    for part in _chunks(h.shape[0]):
        logits = _workspace(owner, part.stop - part.start, weight.shape[0], h)
        torch.mm(h[part], weight.t(), out=logits)
        nll += _nll_chunk(logits, targets[part])[0].sum()
    return nll


def lm_head_nll(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, owner: Any = None, tied: TiedGrad | None = None
) -> torch.Tensor:
    """Summed next-token NLL of hidden states `h` (N, C) under the head `weight` (V, C) for `targets` (N,).

    Equal to `F.cross_entropy(h @ weight.T, targets, reduction="sum")` within float rounding. `owner` (the model)
    keeps the CPU workspace between calls; `tied` hands the weight gradient to `tied_embedding` (same graph only).
    fp32/fp64 without autocast only; the caller falls back otherwise.
    """
    owner = owner if owner is not None else lm_head_nll
    if h.shape[0] == 0:
        return h.sum() * 0.0  # zero, still attached to the graph
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LMHeadNLL.apply(h, weight, targets, owner, tied)
    return _nll_no_grad(h, weight, targets, owner)
