"""Judge replies on disk, so re-scoring the same generations costs no calls, across trials and sweeps.

One SQLite file (WAL mode, busy timeout) is safe for the many processes of a parallel sweep on one machine; each
entry is written once (`INSERT OR IGNORE`), so two workers judging the same text both keep the first reply. The key
is the sha256 of (model id, full prompt text, repeat index): a changed template, reference or response is a miss.
Only replies that give a score are stored; failed requests and empty or unreadable replies are asked again next
time (and such a reply found in an older cache is ignored).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import tenacity

from common.retry import retrying

log = logging.getLogger(__name__)

CACHE_FILE = "judge_cache.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    reply TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(model: str, prompt: str, repeat: int, *, response_format: str | None = None) -> str:
    """The entry's identity: which judge, the exact text it saw, which of the k repeats, and the reply format it
    was asked for (None: plain text, the key replies had before structured output)."""
    parts: list[object] = [model, prompt, repeat] + ([response_format] if response_format else [])
    payload = json.dumps(parts, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """A process- and thread-safe map from `cache_key` to the judge's raw reply text."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / CACHE_FILE
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout = 60000")
        self._retry_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a crash may lose the last replies
        self._retry_locked(lambda: self._conn.execute(_SCHEMA))

    def get_many(self, keys: list[str]) -> dict[str, str]:
        """The cached replies among `keys`."""
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(f"SELECT key, reply FROM replies WHERE key IN ({marks})", chunk)
                found.update(rows.fetchall())
        return found

    def put(self, key: str, model: str, repeat: int, reply: str) -> None:
        """Store a reply unless one is there already (first writer wins)."""
        with self._lock:
            self._retry_locked(
                lambda: self._conn.execute(
                    "INSERT OR IGNORE INTO replies (key, model, repeat, reply, created) VALUES (?, ?, ?, ?, ?)",
                    (key, model, repeat, reply, time.time()),
                )
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _retry_locked(action: Callable[[], object], attempts: int = 20) -> None:
        """Retry an action that lost a race for the file's write lock (schema creation, WAL switch)."""
        waits = tenacity.wait_incrementing(start=0.05, increment=0.05)  # 0.05 s, 0.10 s, 0.15 s...
        retrying(_locked, waits, attempts=attempts)(action)


def _locked(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
