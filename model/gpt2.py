"""GPT-2 from scratch, numerically equal to Hugging Face's `GPT2LMHeadModel`.

References: OpenAI's GPT-2 (Radford et al. 2019, github.com/openai/gpt-2), Hugging Face's `modeling_gpt2.py`, and
karpathy/nanoGPT's `model.py`, whose layout this file follows: config → attention → MLP → block → GPT.
Module names are Hugging Face's (`transformer.wte`, `transformer.h.{i}.attn.c_attn`, ...), so loading a checkpoint
is a key copy plus transposes of HF's Conv1D weights (`model.hub.from_pretrained`).

Speed choices: fused qkv, `scaled_dot_product_attention` with `is_causal=True` whenever no padding mask is needed
(right padding never needs one under a causal mask), and the LM head only where it is read: at loss positions in
`lm_loss` (through `model.lm_head.TiedHeadLoss`), at the last token in generation, not at all for classification.
This module imports nothing else from `model/` but `lm_head`: loading, generation, LoRA, freezing and checkpoints
build on it, never the reverse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.lm_head import TiedHeadLoss

# GPT-2's sizes (params with the tied head): small 124M, medium 355M, large 774M, xl 1558M; tiny is for tests
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64},
    "small": {"n_layer": 12, "n_head": 12, "n_embd": 768},
    "medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
    "large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},
    "xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},
}

# Hugging Face stores these four as Conv1D, i.e. weight (in, out); ours are nn.Linear, weight (out, in)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass
class GPTConfig:
    """GPT-2's shape. `num_classes` set = a classification model (a `score` head instead of reading the LM head)."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    n_positions: int = 1024
    dropout: float = 0.0  # embeddings, attention probabilities and residuals alike (GPT-2 trained with 0.1)
    num_classes: int | None = None
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, but got {name}={value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"`n_embd % n_head == 0` must hold, but got n_embd={self.n_embd}, n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), but got dropout={self.dropout!r}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2
        ):
            raise ValueError(f"`num_classes` must be None or an integer >= 2, but got num_classes={self.num_classes!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A GPT-2 size by name (`tiny`, `small`, `medium`, `large`, `xl`), with other fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset, expected one of {', '.join(PRESETS)}, but got preset={name!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}, expected some of {sorted(known)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused qkv projection and an optional KV cache."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """`kv_cache` (2, B, nh, T_max, hs), preallocated by generation: k, v go in at `start`, attention reads to T."""
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if kv_cache is not None:
            kv_cache[0, :, :, start : start + T] = k
            kv_cache[1, :, :, start : start + T] = v
            k = kv_cache[0, :, :, : start + T]
            v = kv_cache[1, :, :, : start + T]
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new" is the tanh approximation
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, is_causal, kv_cache, start)
        return x + self.mlp(self.ln_2(x))


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when no row has a real token after a padding one (no padding at all counts too)."""
    return not bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any())


def padding_mask(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean SDPA mask (B, 1, T, T) and position ids (B, T) for any padding, left padding included.

    Positions count real tokens only, so a left-padded row sees the same positions as the unpadded row. Each query
    may also see itself, so rows of pure padding stay finite (they are never read).
    """
    T = attention_mask.shape[1]
    keep = attention_mask.bool()
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril_()
    mask = (causal & keep[:, None, None, :]) | torch.eye(T, dtype=torch.bool, device=attention_mask.device)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
    return mask, positions


class GPT(nn.Module):
    """GPT-2: token + position embeddings, `n_layer` blocks, a final LayerNorm, a tied LM head.

    With `config.num_classes` set, `forward` returns class logits from `score`, a bias-free linear head (as Hugging
    Face's `GPT2ForSequenceClassification`) read at the last non-padding token, initialised N(0, 0.02).
    Pretrained weights: `model.from_pretrained`; generation: `model.generate` (functions that use the model).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.n_positions, config.n_embd),
                "drop": nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity(),
                "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                "ln_f": nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.score = nn.Linear(config.n_embd, config.num_classes, bias=False) if config.num_classes else None
        self.tie_weights()
        self.gradient_checkpointing = False
        self.frozen_blocks = 0  # set by model.freeze_blocks; apply_lora leaves these blocks without adapters
        self.lora_config: dict[str, Any] | None = None  # set by model.lora.apply_lora
        self.lora_merged: Any = None  # set by model.lora.merge_lora: what unmerge_lora puts back
        self.source: dict[str, Any] | None = None  # set by from_pretrained: where the base weights came from
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def tie_weights(self) -> None:
        self.lm_head.weight = self.transformer.wte.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward: less memory for more compute."""
        self.gradient_checkpointing = bool(enabled)

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must be 2-D (batch, time), but got input_ids.shape={tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if self.config.n_positions < T:
            raise ValueError(f"sequence length must be <= n_positions={self.config.n_positions}, but got length={T}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                "`attention_mask.shape == input_ids.shape` must hold, but got "
                f"attention_mask.shape={tuple(attention_mask.shape)}, input_ids.shape={tuple(input_ids.shape)}"
            )

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output (B, T, C), before `ln_f`."""
        self._check_inputs(input_ids, attention_mask)
        return self._blocks(self.transformer.wte(input_ids), attention_mask)

    def _blocks(self, tok_emb: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Position embeddings, dropout and every block over token embeddings `tok_emb` (B, T, C)."""
        T = tok_emb.shape[1]
        if attention_mask is None or is_right_padded(attention_mask):
            # under a causal mask real tokens never see right padding: the fast kernel gives the same values
            mask, is_causal = None, True
            positions = torch.arange(T, device=tok_emb.device)
        else:
            (mask, positions), is_causal = padding_mask(attention_mask), False
        x = self.transformer.drop(tok_emb + self.transformer.wpe(positions))
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.transformer.h:
            x = checkpoint(block, x, mask, is_causal, use_reentrant=False) if ckpt else block(x, mask, is_causal)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab); with `num_classes`, class logits (B, num_classes) at the last real token."""
        x = self.hidden_states(input_ids, attention_mask)
        if self.score is None:
            return self.lm_head(self.transformer.ln_f(x))
        T = input_ids.shape[1]
        if attention_mask is None:
            last = x[:, -1]
        else:  # the last 1 of each row; works for right and left padding
            idx = T - 1 - attention_mask.flip(-1).argmax(-1)
            last = x[torch.arange(x.shape[0], device=x.device), idx]
        return self.score(self.transformer.ln_f(last))

    def lm_loss(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Next-token NLL. `labels` align with `input_ids` (shifted here, as Hugging Face), -100 = no loss.

        `ln_f` and the LM head run only at positions that carry a loss (never padding or a masked prompt), so no
        (B, T, vocab) tensor is made. `reduction="sum"` lets a caller average over tokens across micro-batches.
        """
        return self.lm_loss_rows(input_ids, labels, attention_mask, None, reduction)[0]

    def lm_loss_rows(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None,
        sizes: list[int] | None,
        reduction: str = "sum",
    ) -> list[torch.Tensor]:
        """`lm_loss` of each run of consecutive rows (`sizes`: their row counts; None = the whole batch as one), from
        one pass over the blocks: packed trials, one loss each."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"`reduction` must be one of mean, sum, but got reduction={reduction!r}")
        if labels.shape != input_ids.shape:
            raise ValueError(
                "`labels.shape == input_ids.shape` must hold, but got "
                f"labels.shape={tuple(labels.shape)}, input_ids.shape={tuple(input_ids.shape)}"
            )
        self._check_inputs(input_ids, attention_mask)
        head = TiedHeadLoss(self.transformer.wte, self.lm_head)
        x = self._blocks(head.embed(input_ids), attention_mask)
        keep = labels[:, 1:] != -100
        if attention_mask is not None:
            keep &= attention_mask[:, 1:].bool()
        sizes = sizes if sizes is not None else [input_ids.shape[0]]
        losses = []
        # split, not indexing: one gradient tensor for x in backward, not one zero-filled copy per run of rows
        for x_part, keep_part, labels_part in zip(x.split(sizes), keep.split(sizes), labels.split(sizes), strict=True):
            h = x_part[:, :-1][keep_part]  # (N, C)
            if reduction == "mean" and h.shape[0] == 0:
                raise ValueError("`labels` must mark at least one position for the loss (!= -100), but got none")
            targets = labels_part[:, 1:][keep_part].long()
            losses.append(head.loss(self.transformer.ln_f(h), targets, reduction))
        return losses


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied tensors (wte = lm_head) count once, adapters count in both."""
    trainable = total = 0
    for p in model.parameters():  # parameters() yields each shared tensor once
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
