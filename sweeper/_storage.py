"""Where the study lives: storage URLs, opening them, and creating or loading the study safely.

One place for what talks to the database before trials run (schema creation, the study) and for the retries that
the sweep loop, the heartbeats and the jobs wrap around their writes when the connection is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from common.retry import Backoff, retrying

if TYPE_CHECKING:
    import optuna
    from tenacity import RetryCallState

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:///"
STORAGE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql", "journal"})
T = TypeVar("T")
DEFAULT_RECONNECT_TIMEOUT_S = 120.0
SCHEMA_LOCK_KEY = 0x6C6F7261  # "lora": any constant shared by every worker
# refused for good (wrong password, database or role): trying again would only delay the error
PERMANENT = ("authentication failed", "does not exist", "no pg_hba.conf entry", "Access denied", "Unknown database")


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


def is_transient(error: BaseException) -> bool:
    """A lost, refused or locked connection (server restarting, network gone, SQLite busy): worth trying again.

    Optuna wraps SQLAlchemy's errors in StorageInternalError, so the whole chain of causes is looked at.
    """
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, PendingRollbackError

    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(marker in str(e) for e in chain for marker in PERMANENT):
        return False
    for e in chain:
        # PendingRollbackError: a session whose connection died mid-transaction, usable again once rolled back
        if isinstance(e, (OperationalError, InterfaceError, PendingRollbackError)):
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
    return False


def is_creation_race(error: BaseException) -> bool:
    """Transient, or another process creating the same tables or study at the same moment."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    chain = [error, error.__cause__]  # Optuna's StorageInternalError carries SQLAlchemy's error as its cause
    racing = (isinstance(e, ProgrammingError) and "already exists" in str(e) for e in chain)
    return is_transient(error) or any(isinstance(e, IntegrityError) for e in chain) or any(racing)


def with_retries(
    action: Callable[[], T],
    what: str,
    *,
    timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
    first_wait_s: float = 0.2,
    max_wait_s: float = 5.0,
    retry_on: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Run a storage action, trying again with exponential backoff while `retry_on(error)` holds, for up to
    `timeout_s` seconds; then the last error is raised.

    A database restart or a network blip must not cost a trial's result, and several sweep processes started
    together on an empty database race to create Optuna's tables (the losers succeed on the next try).
    """
    tries = 0

    def attempt() -> T:
        nonlocal tries
        tries += 1
        return action()

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        left = timeout_s - (state.seconds_since_start or 0.0)
        level = (
            logging.WARNING
            if state.attempt_number == 1 and error is not None and is_transient(error)
            else logging.DEBUG
        )
        log.log(level, "%s failed (%s); trying again for up to %.0f s", what, first_line(error), left)

    # waits of first_wait_s, doubling up to max_wait_s, each stretched by up to half so workers spread out
    backoff = Backoff(initial_s=first_wait_s, max_s=max_wait_s, spread=0.5)
    result = retrying(retry_on, backoff, timeout_s=timeout_s, before_sleep=log_retry)(attempt)
    if tries > 1 and log.isEnabledFor(logging.INFO):
        log.info("%s succeeded after %d tries", what, tries)
    return result


def first_line(error: BaseException) -> str:
    """`Type: first line of the database's message`, short enough for a log line or an error."""
    text = str(getattr(error, "orig", None) or error.__cause__ or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


@dataclass(frozen=True)
class HeartbeatSettings:
    """Storage-side heartbeat settings (RDB storages only): see `sweeper._heartbeat`."""

    interval: int
    grace_period: int
    stale_trial_callback: Callable[..., None] | None


def open_storage(
    url: str | None,
    *,
    heartbeat: HeartbeatSettings | None = None,
    timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
) -> optuna.storages.BaseStorage:
    """Optuna storage for a URL: RDB (SQLite, PostgreSQL, MySQL), journal file, or in memory (None).

    `heartbeat` only applies to RDB storages (Optuna's journal and in-memory storages have none).
    """
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
    else:
        # a pooled connection may be dead after a server restart: test it at checkout and reconnect
        engine_kwargs = {"pool_pre_ping": True}
    kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs}
    if heartbeat is not None:
        kwargs.update(
            heartbeat_interval=heartbeat.interval,
            grace_period=heartbeat.grace_period,
            heartbeat_stale_trial_callback=heartbeat.stale_trial_callback,
        )

    def create() -> optuna.storages.RDBStorage:
        with _schema_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(url, **kwargs)

    return with_retries(create, f"opening {mask_url(url)}", timeout_s=timeout_s, retry_on=is_creation_race)


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, one process at a time creates (or checks) Optuna's tables: a session-level advisory lock.

    Without it, workers started together on an empty database fail with duplicate-type or duplicate-table errors
    from concurrent CREATE TABLE statements. Other databases rely on `with_retries`.
    """
    if url_scheme(url) != "postgresql":
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


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
        retry_on=is_creation_race,
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
