"""The on-disk cache of tokenized splits, so the second and later trials of a sweep do no tokenization.

An entry is two files under ``<cache_dir>/tokens/``: ``<task>-<key>.npz`` (the split arrays) and ``.json`` (the
load report and, for alpaca, the raw test records). The key hashes everything that changes the tokens: the data
(file contents or hub commit), the tokenizer, the prompt template, the effective max length, split sizes, seed and
every other task setting. Writes are atomic (`common.files`), so trials running in parallel never read half an
entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_open, write_atomic
from tasks.batching import TokenizedSplit

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the cached layout or the tokenization rules change (2: alpaca keeps val records)
SPLITS = ("train", "val", "test")


def default_cache_dir() -> Path:
    """``$LORASWEEP_CACHE_DIR``, else ``~/.cache/lorasweep`` (the trainer passes ``paths.cache_dir``)."""
    return Path(os.environ.get("LORASWEEP_CACHE_DIR") or Path.home() / ".cache" / "lorasweep").expanduser()


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of the key parts (JSON with sorted keys)."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_path(cache_dir: str | Path | None, task: str, key: str) -> Path:
    """The entry's path without suffix."""
    return Path(cache_dir or default_cache_dir()).expanduser() / "tokens" / f"{task}-{key[:20]}"


def save(entry: Path, splits: dict[str, TokenizedSplit], meta: dict[str, Any]) -> None:
    """Store the splits and their metadata (JSON-serialisable) at `entry`."""
    arrays = {f"{name}.{k}": v for name, split in splits.items() for k, v in split.arrays().items()}
    with atomic_open(entry.with_suffix(".npz"), binary=True) as f:
        np.savez(f, **arrays)
    # the JSON is written last: its presence marks a complete entry
    write_atomic(entry.with_suffix(".json"), json.dumps(meta, indent=1).encode())


def load(entry: Path) -> tuple[dict[str, TokenizedSplit], dict[str, Any]] | None:
    """The splits and metadata stored at `entry`, or None when absent or unreadable (then rebuilt)."""
    npz, meta_file = entry.with_suffix(".npz"), entry.with_suffix(".json")
    if not (npz.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        with np.load(npz, allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in stored.files}
        splits = {
            name: TokenizedSplit(
                tokens=arrays[f"{name}.tokens"],
                offsets=arrays[f"{name}.offsets"],
                labels=arrays.get(f"{name}.labels"),
                prompt_lens=arrays.get(f"{name}.prompt_lens"),
            )
            for name in SPLITS
        }
    except (OSError, ValueError, KeyError) as e:
        log.warning("token cache entry %s is unreadable (%s); rebuilding it", entry, e)
        return None
    return splits, meta
