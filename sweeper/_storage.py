"""Where the study lives: storage URLs, opening them, and creating or loading the study safely.

One place for everything that talks to the database before trials run, so that retries around schema creation
and writes (and heartbeats, for several machines) wrap these functions instead of the sweep loop.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:///"
STORAGE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql", "journal"})
T = TypeVar("T")


def url_scheme(url: str) -> str:
    """`postgresql+psycopg://...` -> `postgresql`."""
    return url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""


def mask_url(url: str | None) -> str:
    """The URL with any password replaced by ***, for logs, errors and results files."""
    if url is None:
        return "in-memory"
    if url_scheme(url) in ("", "sqlite", "journal"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL still must not leak what looks like a password
        return url.split("@", 1)[-1] if "@" in url else url


def absolute_url(url: str | None, base_dir: str | os.PathLike[str]) -> str | None:
    """Make a relative SQLite or journal file absolute against `base_dir`, so jobs that chdir find it."""
    if url is None:
        return None
    scheme = url_scheme(url)
    prefix = "sqlite:///" if scheme == "sqlite" else JOURNAL_PREFIX if scheme == "journal" else None
    if prefix is None or not url.startswith(prefix):
        return url
    path = url[len(prefix) :]
    if not path or path == ":memory:" or os.path.isabs(path):
        return url
    return prefix + str(Path(base_dir, path).resolve())


def with_retries(action: Callable[[], T], what: str, attempts: int = 5, first_wait_s: float = 0.2) -> T:
    """Run a storage action again after transient database errors (locked SQLite, tables being created).

    Several sweep processes started together on an empty database race to create Optuna's tables; the losers
    get an OperationalError or IntegrityError and succeed on the next try.
    """
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (OperationalError, IntegrityError, StorageInternalError) as e:
            if attempt == attempts:
                raise
            wait = first_wait_s * 2 ** (attempt - 1) * (1 + random.random())
            log.debug("%s failed (%s); retrying in %.1f s", what, type(e).__name__, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """Optuna storage for a URL: RDB (SQLite, PostgreSQL, MySQL), journal file, or in memory (None)."""
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    if url_scheme(url) == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len(JOURNAL_PREFIX) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if url_scheme(url) == "sqlite":
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # several processes write to one file: wait for the lock instead of failing after pysqlite's 5 s
        engine_kwargs = {"connect_args": {"timeout": 60}}
    return with_retries(
        lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs), f"opening {mask_url(url)}"
    )


def open_study(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    directions: list[str],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    metric_names: list[str] | None,
) -> optuna.Study:
    """Create the study or load it; a stored study with other directions or metric names is an error."""
    import optuna

    study = with_retries(
        lambda: optuna.create_study(
            storage=storage,
            study_name=study_name,
            directions=directions,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        ),
        f"creating study {study_name!r}",
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise ValueError(
            f"The directions of a resumed study must match hydra.sweeper.direction, but got direction={directions} "
            f"for study {study_name!r} stored with {stored}; choose another hydra.sweeper.study_name."
        )
    if metric_names:
        if study.metric_names is None:
            _set_metric_names(study, metric_names)
        elif study.metric_names != metric_names:
            raise ValueError(
                "The objective of a resumed study must match the stored one, but got "
                f"objective={metric_names} for study {study_name!r} stored with {study.metric_names}; "
                "choose another hydra.sweeper.study_name."
            )
    return study


def _set_metric_names(study: optuna.Study, names: list[str]) -> None:
    import warnings

    with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
        warnings.simplefilter("ignore")
        study.set_metric_names(names)
