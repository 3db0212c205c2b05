"""Text classification tasks: SST-2, AG News, SMS Spam, and the user's own table (`text_classification`).

Each reads its dataset from the hub (parquet) or from ``task.path`` in the original format:

- a folder holding the original split files (e.g. GLUE's ``train.tsv`` + ``dev.tsv``), or
- one file, from which train, validation and test are all carved (stratified, ``task.seed``).

Texts are stripped of surrounding whitespace (SST-2 rows end in a space, the hub's SMS rows in a newline) and rows
left empty are dropped with a logged count. Texts longer than ``max_length`` tokens are cut on
``task.truncation_side`` (default ``right``: keep the start, where titles and openings carry the topic; ``left``
keeps the end). The model reads its class from the last real token of each row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tasks.base import Task, require_rows, truncate
from tasks.batching import TokenizedSplit
from tasks.metrics import accuracy, macro_f1
from tasks.sources import (
    TABLE_FORMATS,
    DataError,
    Source,
    hub_source,
    local_source,
    read_delimited,
    read_table,
    require_columns,
)
from tasks.splits import carve
from tasks.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


def frame(texts: pd.Series, labels: pd.Series) -> pd.DataFrame:
    """The reader output: text and raw label as strings, plus the 1-based row number for error messages."""
    return pd.DataFrame(
        {"text": texts.astype(str), "label": labels.astype(str).str.strip(), "_row": np.arange(1, len(texts) + 1)}
    )


def map_labels(df: pd.DataFrame, mapping: dict[str, int], allowed: Iterable[str]) -> np.ndarray:
    """Class ids for the raw labels of `df`; unknown labels are an error naming them, the file and rows."""
    ids = df["label"].map(mapping)
    bad = ids.isna()
    if bad.any():
        values = sorted(set(df.loc[bad, "label"]))
        rows = df.loc[bad, ["_file", "_row"]].head(3)
        at = ", ".join(f"{Path(f).name} row {r}" for f, r in rows.itertuples(index=False))
        raise DataError(
            f"labels must be one of {list(allowed)}, but got {values[:10]}{' ...' if len(values) > 10 else ''} "
            f"in {int(bad.sum())} rows of {df.loc[bad, '_file'].iloc[0]} (e.g. {at})"
        )
    return ids.to_numpy(dtype=np.int64)


class ClassificationTask(Task):
    """A labelled-text task: carving, tokenizing with truncation, cross-entropy, accuracy and macro-F1."""

    kind: ClassVar[str] = "classification"
    fixed_class_names: ClassVar[tuple[str, ...] | None] = None
    hub_splits: ClassVar[dict[str, str]] = {"train": "train"}  # our split -> the hub's
    hub_columns: ClassVar[tuple[str, str]] = ("text", "label")
    local_files: ClassVar[dict[str, str]] = {}  # our split -> original file name inside a folder

    def __init__(self, task_cfg: Any = None) -> None:
        super().__init__(task_cfg)
        self._class_names = self.fixed_class_names

    # ---------------------------------------------------------------------------------------------- data

    def read_local(self, path: Path) -> pd.DataFrame:
        """One original-format file as `frame(...)`."""
        raise NotImplementedError

    def read_hub(self, path: Path) -> pd.DataFrame:
        df = pd.read_parquet(path)
        require_columns(df, self.hub_columns, str(path))
        return frame(df[self.hub_columns[0]], df[self.hub_columns[1]])

    def label_mapping(self, source: Source, frames: dict[str, pd.DataFrame]) -> tuple[dict[str, int], list[str]]:
        """Raw label string -> class id, and the allowed raw labels (for errors)."""
        raw = [str(i) for i in range(len(self.fixed_class_names or ()))]
        return {r: i for i, r in enumerate(raw)}, raw

    def source(self, s: dict[str, Any]) -> Source:
        if s.get("path") is None:
            return hub_source(
                s["hub_id"],
                s.get("revision"),
                self.hub_splits,
                reader=self.read_hub,
                path_hint=f"a folder holding {' and '.join(self.local_files.values())} or one such file",
            )
        path = Path(str(s["path"])).expanduser()
        if path.is_file():
            return local_source({"train": [path]}, self.read_local)
        found = {split: path / name for split, name in self.local_files.items() if (path / name).is_file()}
        if "train" not in found:
            listing = sorted(p.name for p in path.iterdir())[:10]
            raise DataError(
                f"task.path folder {path} must hold {self.local_files['train']} (the train split), but got {listing}; "
                f"or set task.path to one file to carve train/val/test from it"
            )
        return local_source({split: [p] for split, p in found.items()}, self.read_local)

    def build(
        self, s: dict[str, Any], source: Source, max_length: int
    ) -> tuple[dict[str, TokenizedSplit], dict[str, Any]]:
        frames = source.read()
        mapping, allowed = self.label_mapping(source, frames)
        dropped = 0
        labels: dict[str, np.ndarray] = {}
        for split, df in list(frames.items()):
            df["text"] = df["text"].str.strip()
            ids = map_labels(df, mapping, allowed)
            keep = (df["text"] != "").to_numpy()
            dropped += int((~keep).sum())
            require_rows(int(keep.sum()), f"{self.name}'s {split} split ({source.description})")
            frames[split], labels[split] = df[keep].reset_index(drop=True), ids[keep]
        if dropped:
            log.warning("%s: dropped %d rows with an empty text", self.name, dropped)
        plan = carve(labels, s, s["seed"], balance=s["balance"], what=f"{self.name} ({source.description})")

        enc = get_tokenizer()
        log.info("%s: tokenizing %d rows from %s", self.name, sum(len(r) for _, r in plan.values()), source.description)
        splits, info_splits = {}, {}
        for split in ("train", "val", "test"):
            upstream, rows = plan[split]
            texts = frames[upstream]["text"].to_numpy()[rows].tolist()
            ids = enc.encode_ordinary_batch(texts)
            cut = truncate(ids, max_length, s["truncation_side"])
            y = labels[upstream][rows]
            splits[split] = TokenizedSplit.from_rows(ids, labels=y)
            counts = np.bincount(y, minlength=len(self.class_names))
            info_splits[split] = {
                "rows": len(ids),
                "from": upstream,
                "truncated": cut,
                "class_counts": {n: int(c) for n, c in zip(self.class_names, counts, strict=True)},
            }
            if cut:
                log.info(
                    "%s: %d of %d %s rows cut to %d tokens (%s)",
                    self.name,
                    cut,
                    len(ids),
                    split,
                    max_length,
                    s["truncation_side"],
                )
        info = {
            "task": self.name,
            "kind": self.kind,
            "source": source.description,
            "max_length": max_length,
            "truncation": f"{s['truncation_side']} (keep the {'start' if s['truncation_side'] == 'right' else 'end'})",
            "dropped": {"empty_text": dropped},
            "balanced": s["balance"],
            "splits": info_splits,
        }
        return splits, {"info": info, "class_names": list(self.class_names)}

    # ------------------------------------------------------------------------------------------ metrics

    def compute_loss(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over the batch's rows, and the row count."""
        logits = model(batch["input_ids"], batch["attention_mask"])  # (B, num_classes)
        return F.cross_entropy(logits.float(), batch["labels"]), int(batch["labels"].numel())

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """``loss`` (mean cross-entropy), ``accuracy`` and ``macro_f1`` over all rows of `batches`."""
        was_training = model.training
        model.eval()
        loss_sum, preds, golds = 0.0, [], []
        try:
            for batch in batches:
                logits = model(batch["input_ids"], batch["attention_mask"]).float()
                loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
                preds.append(logits.argmax(-1).cpu())
                golds.append(batch["labels"].cpu())
        finally:
            model.train(was_training)
        if not preds:
            raise ValueError("evaluate needs at least one batch, but got none")
        p, g = torch.cat(preds).numpy(), torch.cat(golds).numpy()
        return {"loss": loss_sum / len(g), "accuracy": accuracy(p, g), "macro_f1": macro_f1(p, g)}


class SST2(ClassificationTask):
    """GLUE SST-2 (Socher et al. 2013): sentiment of movie-review phrases.

    Upstream test labels are hidden, so the official validation split (``dev.tsv``, 872 rows) is our test split
    and validation is carved from train (stratified). GLUE's TSVs are read with ``QUOTE_NONE``.
    """

    name = "sst2"
    fixed_class_names = ("negative", "positive")
    hub_splits: ClassVar[dict[str, str]] = {"train": "train", "test": "validation"}
    hub_columns = ("sentence", "label")
    local_files: ClassVar[dict[str, str]] = {"train": "train.tsv", "test": "dev.tsv"}

    def read_local(self, path: Path) -> pd.DataFrame:
        df = read_delimited(path, sep="\t", header=True, quoted=False)
        require_columns(df, ("sentence", "label"), str(path))
        return frame(df["sentence"], df["label"])


class AGNews(ClassificationTask):
    """AG News (Zhang et al. 2015): news topic. The original CSVs have no header: class 1-4, title, description;
    the text is ``title + " " + description`` as on the hub, with the source's backslashes and HTML escapes kept."""

    name = "ag_news"
    fixed_class_names = ("World", "Sports", "Business", "Sci/Tech")
    hub_splits: ClassVar[dict[str, str]] = {"train": "train", "test": "test"}
    local_files: ClassVar[dict[str, str]] = {"train": "train.csv", "test": "test.csv"}

    def read_local(self, path: Path) -> pd.DataFrame:
        df = read_delimited(path, sep=",", header=False)
        if df.shape[1] != 3:
            raise DataError(f"{path} must have 3 columns (class, title, description), but got {df.shape[1]}")
        return frame(df[1].str.cat(df[2], sep=" "), df[0])

    def label_mapping(self, source: Source, frames: dict[str, pd.DataFrame]) -> tuple[dict[str, int], list[str]]:
        if source.kind == "hub":
            return super().label_mapping(source, frames)
        return {str(i + 1): i for i in range(4)}, ["1", "2", "3", "4"]


class SMSSpam(ClassificationTask):
    """UCI SMS Spam Collection (Almeida et al. 2011): ham or spam, 747 spam of 5,574.

    One upstream split: train/val/test are carved stratified (70/10/20 by default, as LLMs-from-scratch ch. 6).
    ``task.balance=true`` first undersamples ham to the spam count, as that book does. The original file is
    ``label<TAB>text`` read with ``QUOTE_NONE`` (stray quotes would otherwise swallow line breaks).
    """

    name = "sms_spam"
    fixed_class_names = ("ham", "spam")
    hub_columns = ("sms", "label")
    local_files: ClassVar[dict[str, str]] = {"train": "SMSSpamCollection"}

    def read_local(self, path: Path) -> pd.DataFrame:
        df = read_delimited(path, sep="\t", header=False, quoted=False)
        if df.shape[1] != 2:
            raise DataError(f"{path} must have 2 tab-separated columns (label, text), but got {df.shape[1]}")
        return frame(df[1], df[0])

    def label_mapping(self, source: Source, frames: dict[str, pd.DataFrame]) -> tuple[dict[str, int], list[str]]:
        if source.kind == "hub":
            return super().label_mapping(source, frames)
        return {"ham": 0, "spam": 1}, ["ham", "spam"]


class TextClassification(ClassificationTask):
    """Your own labelled texts: CSV, TSV, JSON/JSONL or parquet, with configurable columns and label names.

    Splits are files (``train_path`` + optional ``val_path``/``test_path``; or ``path`` as a folder holding
    ``train.*``, ``val.*``/``validation.*``/``dev.*``, ``test.*``) or carved from one file (``path``). Labels are
    names from ``label_names`` or their 0-based indices; without ``label_names`` the classes are the sorted distinct
    labels of the data (numerically when all are integers).
    """

    name = "text_classification"
    split_stems: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("train",),
        "val": ("val", "validation", "dev"),
        "test": ("test",),
    }

    def __init__(self, task_cfg: Any = None) -> None:
        super().__init__(task_cfg)
        names = self.settings.get("label_names")
        self._class_names = tuple(str(n) for n in names) if names else None

    def problems(self, s: dict[str, Any]) -> list[str | None]:
        out = super().problems(s)
        if (s.get("path") is None) == (s.get("train_path") is None):
            out.append(
                "exactly one of task.path (a file to carve, or a folder of split files) and task.train_path must "
                f"be set, but got path={s.get('path')!r}, train_path={s.get('train_path')!r}"
            )
        for key in ("train_path", "val_path", "test_path"):
            if s.get(key) is not None and not Path(str(s[key])).expanduser().is_file():
                out.append(f"task.{key} must be an existing file, but got {key}={s[key]!r}")
        if s.get("format") is not None and s["format"] not in TABLE_FORMATS:
            out.append(f"task.format must be one of {', '.join(TABLE_FORMATS)} or null, but got format={s['format']!r}")
        names = s.get("label_names")
        if names is not None and (
            not isinstance(names, list) or len(names) < 2 or len({str(n) for n in names}) != len(names)
        ):
            out.append(f"task.label_names must be a list of at least 2 distinct names or null, but got {names!r}")
        return out

    def source(self, s: dict[str, Any]) -> Source:
        if s.get("train_path") is not None:
            files = {
                k: [Path(str(s[f"{k}_path"])).expanduser()] for k in ("train", "val", "test") if s.get(f"{k}_path")
            }
            return local_source(files, self.read_local)
        path = Path(str(s["path"])).expanduser()
        if path.is_file():
            return local_source({"train": [path]}, self.read_local)
        files = {}
        for split, stems in self.split_stems.items():
            hits = sorted(p for p in path.iterdir() if p.stem in stems and p.suffix.lstrip(".") in TABLE_FORMATS)
            if hits:
                files[split] = hits[:1]
        if "train" not in files:
            raise DataError(
                f"task.path folder {path} must hold a train.<{'|'.join(TABLE_FORMATS)}> file, but got "
                f"{sorted(p.name for p in path.iterdir())[:10]}; or set task.path to one file to carve all splits from"
            )
        return local_source(files, self.read_local)

    def read_local(self, path: Path) -> pd.DataFrame:
        df = read_table(path, self.settings.get("format"))
        columns = (self.settings["text_column"], self.settings["label_column"])
        require_columns(df, columns, f"{path} (task.text_column, task.label_column)")
        return frame(df[columns[0]].fillna(""), df[columns[1]].fillna(""))

    def label_mapping(self, source: Source, frames: dict[str, pd.DataFrame]) -> tuple[dict[str, int], list[str]]:
        names = self.settings.get("label_names")
        if names:
            self._class_names = tuple(str(n) for n in names)
            mapping = {n: i for i, n in enumerate(self._class_names)}
            return {**{str(i): i for i in range(len(names))}, **mapping}, list(self._class_names)
        seen = sorted(set().union(*(set(df["label"]) for df in frames.values())))
        if all(v.lstrip("-").isdigit() for v in seen):
            seen = sorted(seen, key=int)
        if "" in seen or len(seen) < 2:
            raise DataError(
                f"labels must be non-empty with at least 2 distinct values in column "
                f"{self.settings['label_column']!r}, but got {seen[:10]} ({source.description})"
            )
        self._class_names = tuple(seen)
        return {v: i for i, v in enumerate(seen)}, seen
