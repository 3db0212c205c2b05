"""Where raw rows come from: a Hugging Face dataset repo's parquet files, or local files in their original format.

Both end as pandas DataFrames per split; the task modules turn them into texts and labels. Nothing here parses
rows before it is needed: a `Source` first names its files and a fingerprint (commit or content hash) so the
token cache can be checked without reading the data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

TABLE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")


class DataError(ValueError):
    """Data that cannot become a task: says which file, field or row, and what to do."""


# ------------------------------------------------------------------------------------------------- local files


def read_text(path: Path) -> str:
    """A file's text as strict UTF-8 (a BOM is dropped); undecodable bytes name the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path} must be UTF-8, but got byte 0x{data[e.start]:02x} on line {line} that is not; "
            "re-save the file as UTF-8"
        ) from None


def read_delimited(
    path: Path, *, sep: str, header: bool, names: Sequence[str] | None = None, quoted: bool = True
) -> pd.DataFrame:
    """A CSV/TSV file as strings. ``quoted=False`` is ``QUOTE_NONE``: quotes are text (GLUE, SMS Spam)."""
    text = read_text(path)
    try:
        return pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=0 if header else None,
            names=list(names) if names else None,
            quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
            dtype=str,
            keep_default_na=False,
            engine="c",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path} could not be parsed as {'TSV' if sep == chr(9) else 'CSV'}: {e}".strip()) from None


def read_json_records(path: Path, *, lines: bool | None = None) -> list[dict]:
    """A JSON list of objects, or one object per line (``lines``; default: the file ends in ``.jsonl``)."""
    text = read_text(path)
    if lines or (lines is None and path.suffix == ".jsonl"):
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {number} is not valid JSON: {e.msg}, column {e.colno}") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path} must hold a list of JSON objects (one record each), but got {type(records).__name__}")
    return records


def table_format(path: Path, fmt: str | None) -> str:
    """The table format from `fmt` or the file's extension."""
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in TABLE_FORMATS:
        raise DataError(f"format must be one of {', '.join(TABLE_FORMATS)}, but got format={fmt!r} for {path}")
    return fmt


def read_table(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """A user's table: CSV (quoted, header row), TSV (no quoting, header row), JSON/JSONL records or parquet."""
    fmt = table_format(path, fmt)
    if fmt == "csv":
        return read_delimited(path, sep=",", header=True)
    if fmt == "tsv":
        return read_delimited(path, sep="\t", header=True, quoted=False)
    if fmt in ("json", "jsonl"):
        return pd.DataFrame.from_records(read_json_records(path, lines=fmt == "jsonl"))
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"{path} could not be read as parquet: {e}") from None


def require_columns(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{where} must have columns {list(columns)}, but got columns {[str(c) for c in df.columns]} "
            f"(missing {missing})"
        )


def hash_files(paths: Sequence[Path]) -> str:
    """sha256 over the files' bytes, in order: a local source's fingerprint for the token cache."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


# -------------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """Files per split (our split names) plus how to read one, and a fingerprint of their content."""

    description: str  # for logs and reports: "hub stanfordnlp/sst2@8d51e7e" or "file data/SST-2/train.tsv"
    fingerprint: str
    files: dict[str, list[Path]]
    reader: Callable[[Path], pd.DataFrame]
    kind: str = "local"  # local | hub
    notes: list[str] = field(default_factory=list)

    def read(self) -> dict[str, pd.DataFrame]:
        """Each split's rows; a ``_file`` column names the file each row came from (for error messages)."""
        frames = {}
        for split, paths in self.files.items():
            parts = [self.reader(p).assign(_file=str(p)) for p in paths]
            frames[split] = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        return frames


def local_source(files: dict[str, list[Path]], reader: Callable[[Path], pd.DataFrame]) -> Source:
    ordered = [(split, p) for split in sorted(files) for p in files[split]]
    digest = hashlib.sha256("".join(f"{split}:{hash_files([p])};" for split, p in ordered).encode()).hexdigest()
    shown = ", ".join(f"{split}={p}" for split, p in ordered)
    return Source(description=f"local {shown}", fingerprint=f"local:{digest}", files=files, reader=reader)


def _hub_cache_dir() -> Path:
    # read the environment now: huggingface_hub fixes its constants at import time
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser() / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _split_of(path: Path, splits: Sequence[str]) -> str | None:
    """Which hub split a parquet file belongs to: ``train-00000-of-00001*.parquet``, ``train.parquet`` or
    ``train/0000.parquet`` (the ``refs/convert/parquet`` layout)."""
    for split in splits:
        if re.fullmatch(rf"{re.escape(split)}(-\d+-of-\d+.*)?", path.stem) or path.parent.name == split:
            return split
    return None


def hub_source(
    repo_id: str,
    revision: str | None,
    splits: dict[str, str],
    *,
    reader: Callable[[Path], pd.DataFrame] = pd.read_parquet,
    subdir: str | None = None,
    path_hint: str = "the dataset's original files",
) -> Source:
    """The parquet files of dataset `repo_id` at `revision`, from the Hugging Face cache or downloaded into it.

    Args:
        splits: our split name -> the hub's split name (e.g. ``{"train": "train", "test": "validation"}``).
        subdir: only files under this folder of the repo (a dataset config such as ``plain_text``).
        path_hint: what to set ``task.path`` to instead, for the offline error.
    """
    revision = revision or "main"
    where = f"{repo_id}@{revision}"
    folder = _snapshot(repo_id, revision, subdir, path_hint)
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        split = _split_of(path, list(splits.values()))
        if split is not None:
            found.setdefault(split, []).append(path)
    missing = [hub for hub in splits.values() if hub not in found]
    if missing:
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))
        raise DataError(
            f"dataset {where} must have parquet files for splits {list(splits.values())}, but got none for "
            f"{missing} among {names or 'no parquet files'}"
        )
    commit = folder.name
    files = {ours: found[hub] for ours, hub in splits.items()}
    listing = ",".join(f"{s}:{p.relative_to(folder)}" for s in sorted(files) for p in files[s])
    fingerprint = f"hub:{repo_id}@{commit}:{hashlib.sha256(listing.encode()).hexdigest()[:16]}"
    return Source(
        description=f"hub {repo_id}@{commit[:12]}", fingerprint=fingerprint, files=files, reader=reader, kind="hub"
    )


def _snapshot(repo_id: str, revision: str, subdir: str | None, path_hint: str) -> Path:
    """The local folder of the dataset's parquet files (the cache, else a download); a `DataError` saying how on."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"{repo_id}@{revision}"
    try:
        return Path(
            snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision,
                allow_patterns=[f"{subdir}/**.parquet" if subdir else "*.parquet"],
                cache_dir=_hub_cache_dir(),
                local_files_only=_offline(),
            )
        )
    except LocalEntryNotFoundError:
        raise DataError(
            f"dataset {where} is not in the Hugging Face cache ({_hub_cache_dir()}) and the hub cannot be reached"
            f"{' (HF_HUB_OFFLINE=1)' if _offline() else ''}; fetch it once where there is internet with "
            f"`hf download {repo_id} --repo-type dataset --revision {revision}` (same HF_HOME), or set "
            f"task.path to {path_hint}"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise DataError(
            f"dataset {where} could not be fetched from the Hugging Face hub: {e}".splitlines()[0]
        ) from None
