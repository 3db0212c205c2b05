"""What every task shares: settings checked up front, the cached load, and the `TaskData` it returns.

A task subclass says where its rows come from (`source`) and how they become token splits (`build`); `Task.load`
wraps that in the token cache, so a cache hit reads two files and tokenizes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tasks import cache
from tasks.batching import TokenizedSplit
from tasks.sources import DataError, Source
from tasks.splits import size_problem
from tasks.tokenizer import TOKENIZER_ID

log = logging.getLogger(__name__)

TRUNCATION_SIDES = ("right", "left")
# settings that only say where the data lives (its content is hashed instead) or do not change the tokens
NOT_IN_CACHE_KEY = frozenset(
    {"name", "objective", "path", "train_path", "val_path", "test_path", "mask_prompt", "val_generate_size"}
)


@dataclass
class TaskData:
    """A task's tokenized splits, what happened on the way (`info`), and alpaca's raw test records."""

    train: TokenizedSplit
    val: TokenizedSplit
    test: TokenizedSplit
    info: dict[str, Any] = field(default_factory=dict)
    test_records: list[dict[str, str]] | None = None  # alpaca: instruction, input, output of each test row
    val_records: list[dict[str, str]] | None = None  # alpaca: the same for each validation row
    class_names: tuple[str, ...] | None = None

    def splits(self) -> dict[str, TokenizedSplit]:
        return {"train": self.train, "val": self.val, "test": self.test}


class Task:
    """A dataset turned into token splits, plus its loss and metrics.

    Subclasses set `name` and `kind` and implement `source`, `build`, `compute_loss` and `evaluate`. Their settings
    are conf/task/<name>.yaml's (keys and types: its schema in `tasks.config.schema`), with the values given over
    them; `problems` adds what a schema cannot say (ranges, files, rules across keys).
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # "lm" | "classification"

    def __init__(self, task_cfg: Mapping[str, Any] | DictConfig | None = None) -> None:
        self.settings = self.resolve(task_cfg)
        self._class_names: tuple[str, ...] | None = None

    # ------------------------------------------------------------------------------------------- settings

    def resolve(self, task_cfg: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
        """`task_cfg` over conf/task/<name>.yaml, typed by its schema and checked; one `ValueError` listing every
        problem (a key the task does not have is one, with the nearest it has)."""
        from tasks.config.keys import schema_problem
        from tasks.config.options import option_config

        given = OmegaConf.to_container(task_cfg, resolve=True) if isinstance(task_cfg, DictConfig) else task_cfg
        given = {**dict(given or {}), "name": self.name}
        try:
            node = OmegaConf.merge(option_config("task", self.name), given)
        except OmegaConfBaseException as e:
            raise ValueError(f"task {self.name}: {schema_problem(e, given, 'task.')}") from None
        settings = OmegaConf.to_container(node, resolve=True)
        assert isinstance(settings, dict)
        problems = [p for p in self.problems(settings) if p]
        if problems:
            raise ValueError(f"task {self.name}: " + "; ".join(problems))
        return settings

    def problems(self, s: dict[str, Any]) -> list[str | None]:
        """Why settings `s` cannot work, beyond their types (subclasses add theirs)."""
        out = [size_problem(k, s.get(k)) for k in ("train_size", "val_size", "test_size")]
        ml = s.get("max_length")
        if ml is not None and ml < 2:
            out.append(f"`task.max_length >= 2` must hold (or null = the model's context), but got max_length={ml!r}")
        if "truncation_side" in s and s["truncation_side"] not in TRUNCATION_SIDES:
            out.append(
                f"task.truncation_side must be one of {', '.join(TRUNCATION_SIDES)}, "
                f"but got truncation_side={s['truncation_side']!r}"
            )
        path = s.get("path")
        if path is not None and not Path(str(path)).expanduser().exists():
            out.append(f"task.path must be an existing file or folder, but got path={path!r}")
        return out

    # ------------------------------------------------------------------------------------------- classes

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self._class_names

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    # ------------------------------------------------------------------------------------------- loading

    def max_length(self, n_positions: int) -> int:
        """The longest sequence kept: ``task.max_length`` capped by the model's context."""
        ml = self.settings.get("max_length")
        return n_positions if ml is None else min(ml, n_positions)

    def load(
        self,
        task_cfg: Mapping[str, Any] | DictConfig | None = None,
        n_positions: int = 1024,
        *,
        cache_dir: str | Path | None = None,
    ) -> TaskData:
        """Tokenized train/val/test, from the token cache when an identical load was done before.

        Args:
            task_cfg: the ``task`` config node (default: the one this task was built with).
            n_positions: the model's context length; sequences are cut to ``min(task.max_length, n_positions)``.
            cache_dir: where the token cache lives (default ``$LORASWEEP_CACHE_DIR`` or ``~/.cache/lorasweep``).

        Raises:
            DataError: missing or malformed data, sizes the data cannot meet (one line saying what to fix).
        """
        if task_cfg is not None:
            self.settings = self.resolve(task_cfg)
        s = self.settings
        max_length = self.max_length(n_positions)
        source = self.source(s)
        key = cache.cache_key(
            {
                "settings": {k: v for k, v in s.items() if k not in NOT_IN_CACHE_KEY},
                "task": self.name,
                "source": source.fingerprint,
                "tokenizer": TOKENIZER_ID,
                "template": self.template_id(s),
                "max_length": max_length,
            }
        )
        entry = cache.entry_path(cache_dir, self.name, key)
        cached = cache.load(entry)
        if cached is not None:
            splits, meta = cached
            log.info("%s: token cache hit %s (no tokenization)", self.name, entry.with_suffix(".npz"))
            meta["info"]["cache_hit"] = True
        else:
            splits, meta = self.build(s, source, max_length)
            meta["info"].update(cache_hit=False, cache_file=str(entry.with_suffix(".npz")))
            cache.save(entry, splits, meta)
            sizes = "/".join(str(len(splits[k])) for k in cache.SPLITS)
            log.info("%s: train/val/test = %s rows, cached at %s", self.name, sizes, entry.with_suffix(".npz"))
        # the data's identity (its content and every setting that shapes the tokens): part of config_fingerprint
        meta["info"]["data_fingerprint"] = key[:32]
        names = meta.get("class_names")
        self._class_names = tuple(names) if names is not None else None
        for split in splits.values():
            split.mask_prompt = bool(s.get("mask_prompt", True))
        return TaskData(
            **splits,
            info=meta["info"],
            test_records=meta.get("test_records"),
            val_records=meta.get("val_records"),
            class_names=self._class_names,
        )

    def template_id(self, settings: dict[str, Any]) -> str:
        """What turns rows into text (prompt template, field joining), for the cache key."""
        return ""

    def source(self, settings: dict[str, Any]) -> Source:
        raise NotImplementedError

    def build(
        self, settings: dict[str, Any], source: Source, max_length: int
    ) -> tuple[dict[str, TokenizedSplit], dict[str, Any]]:
        """Read, carve and tokenize: the splits and ``{"info", "class_names"?, "test_records"?, "val_records"?}``."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------------- loss, metrics

    def compute_loss(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(mean loss over the batch's targets, number of targets); the trainer weights by the count."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
        raise NotImplementedError


def truncate(rows: list[list[int]], max_length: int, side: str = "right") -> int:
    """Cut rows longer than `max_length` in place (``right``: keep the start; ``left``: keep the end); returns
    how many were cut."""
    cut = 0
    for i, row in enumerate(rows):
        if len(row) > max_length:
            rows[i] = row[:max_length] if side == "right" else row[-max_length:]
            cut += 1
    return cut


def require_rows(n: int, what: str) -> None:
    if n == 0:
        raise DataError(f"{what} must keep at least one row, but got 0 after dropping empty texts")
