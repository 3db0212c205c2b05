"""Block freezing: the original report's "transformer blocks to fine-tune vs freeze"."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from model.gpt2 import count_parameters
from model.lora import unwrap_lora

if TYPE_CHECKING:
    from model.gpt2 import GPT

logger = logging.getLogger(__name__)


def freeze_blocks(gpt: GPT, k: int) -> GPT:
    """Freeze the token/position embeddings and the first `k` transformer blocks; `k=0` freezes nothing.

    Freezing only ever adds: nothing is unfrozen, and a smaller `k` than an earlier call changes nothing. Works
    before or after `apply_lora`: frozen blocks hold no adapters (any there are merged into the base weights: at
    the adapters' start that gives back the base model, within float rounding for PiSSA and DoRA). The LM head is
    tied to `wte`, so with `k >= 1` it is frozen too; a classification head, the final LayerNorm and the later
    blocks keep their state.

    Raises:
        ValueError: `k` is not an integer in [0, n_layer].
    """
    n_layer = gpt.config.n_layer
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n_layer:
        raise ValueError(f"`freeze_blocks` k must be an integer in [0, {n_layer}] (n_layer), but got k={k!r}")
    if k == 0:
        return gpt
    gpt.transformer.wte.requires_grad_(False)
    gpt.transformer.wpe.requires_grad_(False)
    removed = 0
    for block in gpt.transformer.h[:k]:
        removed += unwrap_lora(block)
        block.requires_grad_(False)
    gpt.frozen_blocks = max(gpt.frozen_blocks, k)
    trainable, total = count_parameters(gpt)
    logger.info(
        "froze embeddings and blocks 0-%d of %d%s: %s trainable of %s parameters",
        k - 1,
        n_layer,
        f" ({removed} LoRA adapters merged away)" if removed else "",
        f"{trainable:,}",
        f"{total:,}",
    )
    return gpt
