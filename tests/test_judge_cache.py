"""The judge's reply cache: keyed by (model, prompt, repeat), first writer wins, safe with several processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tasks.judge.cache import JudgeCache, cache_key

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import sys
from pathlib import Path
from tasks.judge.cache import JudgeCache, cache_key
worker, n = sys.argv[2], int(sys.argv[3])
with JudgeCache(Path(sys.argv[1])) as cache:
    for i in range(n):
        cache.put(cache_key("m", f"{worker}-{i}", 0), "m", 0, str(i))
        cache.put(cache_key("m", f"shared-{i}", 0), "m", 0, worker)
        assert cache.get_many([cache_key("m", f"{worker}-{i}", 0)])
"""


def test_key_separates_model_prompt_and_repeat() -> None:
    keys = {cache_key("a", "p", 0), cache_key("b", "p", 0), cache_key("a", "q", 0), cache_key("a", "p", 1)}
    assert len(keys) == 4 and cache_key("a", "p", 0) == cache_key("a", "p", 0)


def test_first_writer_wins_and_entries_survive_reopening(tmp_path: Path) -> None:
    with JudgeCache(tmp_path) as cache:
        cache.put("k", "m", 0, "85")
        cache.put("k", "m", 0, "10")
    with JudgeCache(tmp_path) as cache:
        assert cache.get_many(["k", "missing"]) == {"k": "85"} and len(cache) == 1


def test_several_processes_write_one_cache_at_once(tmp_path: Path) -> None:
    n = 60
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), f"w{w}", str(n)], cwd=ROOT, stderr=subprocess.PIPE
        )
        for w in range(3)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    with JudgeCache(tmp_path) as cache:
        assert len(cache) == 3 * n + n  # each worker's own keys, plus one entry per shared key
        own = cache.get_many([cache_key("m", f"w{w}-{i}", 0) for w in range(3) for i in range(n)])
        assert len(own) == 3 * n
        shared = cache.get_many([cache_key("m", f"shared-{i}", 0) for i in range(n)])
        assert len(shared) == n and set(shared.values()) <= {"w0", "w1", "w2"}
