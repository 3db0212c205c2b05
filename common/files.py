"""One atomic writer: a reader (another trial, the analysis, a resumed sweep) sees the old file or the new one.

The content goes to a hidden temporary file in the same folder (so the final rename never crosses a file system),
then `os.replace` puts it in place in one step. `durable=True` also flushes the file and its folder to disk before
returning, for records that must survive a crash of the machine (a trial's metrics.json); caches skip it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, binary: bool = False, durable: bool = False) -> Iterator[IO[Any]]:
    """A file to write `path`'s new content into (UTF-8 text, or bytes with `binary=True`); it replaces `path`
    when the block ends without an error, and is removed otherwise. Missing parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name: two processes writing the same file never share a temporary; "x" keeps the umask's permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, durable: bool = False) -> Path:
    """Replace `path`'s content with `data` (text as UTF-8) through `atomic_open`; returns the path."""
    with atomic_open(path, binary=isinstance(data, bytes), durable=durable) as f:
        f.write(data)
    return Path(path)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); folders cannot be opened for this on Windows."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
