"""GPT-2's byte-pair encoding through tiktoken, behind one function so every part tokenizes the same way.

Where the BPE comes from, in order:

1. ``LORASWEEP_TIKTOKEN_FILE`` (or the ``path`` argument): a local ``gpt2.tiktoken`` file, i.e. tiktoken's
   ``r50k_base`` ranks (identical to GPT-2's). Its sha256 is checked, so a wrong file fails loudly.
2. ``tiktoken.get_encoding("gpt2")``: reads ``TIKTOKEN_CACHE_DIR`` (files named by the sha1 of their URL) and
   downloads into it when online.

Offline with neither, the error says which of the two to set up.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
from pathlib import Path

import tiktoken

log = logging.getLogger(__name__)

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256  # also the pad id: padding is masked out by the attention mask and -100 labels
VOCAB_SIZE = 50257
TOKENIZER_ID = "tiktoken:gpt2"  # part of the token-cache key; both sources above give the same ranks
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# tiktoken's cache names (sha1 of the download URL) for GPT-2's files, for the error message
CACHE_NAMES = {
    "gpt2.tiktoken": "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4",
    "vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
    "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
}
ENV_FILE = "LORASWEEP_TIKTOKEN_FILE"


class TokenizerUnavailableError(RuntimeError):
    """GPT-2's BPE file could not be found or downloaded."""


def get_tokenizer(path: str | Path | None = None) -> tiktoken.Encoding:
    """The GPT-2 tiktoken `Encoding` (ids 0..50256, ``<|endoftext|>`` = 50256).

    Args:
        path: a local ``gpt2.tiktoken`` file; default ``$LORASWEEP_TIKTOKEN_FILE``, else tiktoken's own cache.

    Raises:
        TokenizerUnavailableError: the file is missing, is not GPT-2's, or cannot be downloaded.
    """
    path = path or os.environ.get(ENV_FILE) or None
    if path is not None:
        return _from_file(str(Path(path).expanduser().resolve()))
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' network errors, hash mismatches, missing cache
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", "<unset>")
        raise TokenizerUnavailableError(
            f"GPT-2's BPE could not be loaded by tiktoken ({type(e).__name__}) with TIKTOKEN_CACHE_DIR={cache}; "
            f"offline, set {ENV_FILE}=<path>/gpt2.tiktoken, or copy gpt2.tiktoken into TIKTOKEN_CACHE_DIR as "
            f"{CACHE_NAMES['gpt2.tiktoken']} (vocab.bpe as {CACHE_NAMES['vocab.bpe']}, encoder.json as "
            f"{CACHE_NAMES['encoder.json']})"
        ) from e


@functools.lru_cache(maxsize=4)
def _from_file(path: str) -> tiktoken.Encoding:
    from tiktoken_ext.openai_public import r50k_pat_str

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TokenizerUnavailableError(
            f"the GPT-2 BPE file must exist, but got {ENV_FILE}={path} ({e.strerror}); point it at a "
            "gpt2.tiktoken (tiktoken's r50k_base file) or unset it to use TIKTOKEN_CACHE_DIR"
        ) from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        raise TokenizerUnavailableError(
            f"the BPE file must be GPT-2's gpt2.tiktoken (sha256 {R50K_SHA256[:12]}...), but got {path} "
            f"with sha256 {digest[:12]}..."
        )
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}
    log.debug("GPT-2 BPE loaded from %s", path)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )
