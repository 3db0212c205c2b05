"""common/: the retry helper (which errors retry, how long it waits, a server's hint, the error it ends with) and
the atomic writer (a reader sees the old file or the new one, never a half; nothing left behind on failure)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import tenacity

from common.files import atomic_open, write_atomic
from common.retry import Backoff, retry_after_seconds, retrying


class Busy(Exception):
    def __init__(self, hint: float | None = None) -> None:
        super().__init__("busy")
        self.hint = hint


def flaky(errors: list[BaseException], result: str = "done"):
    """An action that raises `errors` one per call, then returns `result`; `calls` counts the calls."""

    def action() -> str:
        action.calls += 1
        if errors:
            raise errors.pop(0)
        return result

    action.calls = 0
    return action


def test_retries_until_success_with_exponential_capped_waits() -> None:
    waits: list[float] = []
    action = flaky([Busy(), Busy(), Busy(), Busy()])
    backoff = Backoff(initial_s=1.0, max_s=5.0, exp_base=3.0)
    assert retrying(lambda e: isinstance(e, Busy), backoff, attempts=5, sleep=waits.append)(action) == "done"
    assert action.calls == 5 and waits == [1.0, 3.0, 5.0, 5.0]


def test_jitter_stays_inside_the_cap_and_spread_stretches_the_capped_wait() -> None:
    for _ in range(50):
        waits: list[float] = []
        retrying(lambda e: True, Backoff(1.0, 1.5, jitter_s=1.0), attempts=3, sleep=waits.append)(flaky([Busy()] * 2))
        assert 1.0 <= waits[0] <= 1.5 and waits[1] == 1.5
        waits.clear()
        retrying(lambda e: True, Backoff(1.0, 4.0, spread=0.5), attempts=4, sleep=waits.append)(flaky([Busy()] * 3))
        assert all(low <= w <= 1.5 * low for low, w in zip([1.0, 2.0, 4.0], waits, strict=True))


def test_an_error_not_worth_retrying_is_raised_at_once_and_the_last_one_after_the_attempts() -> None:
    action = flaky([KeyError("no"), Busy()])
    with pytest.raises(KeyError):
        retrying(lambda e: isinstance(e, Busy), Backoff(0.0, 0.0), attempts=5)(action)
    assert action.calls == 1
    action = flaky([Busy(), Busy(), Busy(1.0)])
    with pytest.raises(Busy) as info:  # the error itself, not tenacity's RetryError
        retrying(lambda e: isinstance(e, Busy), Backoff(0.0, 0.0), attempts=3, sleep=lambda s: None)(action)
    assert action.calls == 3 and info.value.hint == 1.0


def test_the_server_hint_sets_the_least_wait_and_one_over_the_cap_ends_the_retries() -> None:
    waits: list[float] = []
    backoff = Backoff(initial_s=0.5, max_s=10.0, jitter_s=0.0, hint=lambda e: getattr(e, "hint", None))
    action = flaky([Busy(hint=7.0), Busy(hint=None), Busy(hint=0.1)])
    assert retrying(lambda e: True, backoff, attempts=4, sleep=waits.append)(action) == "done"
    assert waits == [7.0, 1.0, 2.0]
    action = flaky([Busy(hint=60.0)])
    with pytest.raises(Busy):
        retrying(lambda e: True, backoff, attempts=4, sleep=waits.append)(action)
    assert action.calls == 1, "a server asking for more than max_s is not asked again"


def test_a_time_budget_stops_the_retries_and_cuts_the_last_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]  # tenacity's clock, advanced by the action and the waits alone
    monkeypatch.setattr(tenacity.time, "monotonic", lambda: clock[0])
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    def slow_failure() -> None:
        clock[0] += 0.02
        raise Busy()

    with pytest.raises(Busy):
        retrying(lambda e: True, Backoff(0.05, 0.05), timeout_s=0.1, sleep=wait)(slow_failure)
    # failures at 0.02 s (wait 0.05), 0.09 s (0.01 left: the wait is cut to it), 0.12 s (the budget is spent)
    assert waits == [0.05, pytest.approx(0.01)]


def test_any_tenacity_wait_and_a_before_sleep_hook_are_accepted() -> None:
    seen: list[tuple[int, str, float]] = []
    hook = lambda state: seen.append((state.attempt_number, str(state.outcome.exception()), state.next_action.sleep))
    waits = tenacity.wait_incrementing(start=0.05, increment=0.05)
    assert retrying(lambda e: True, waits, attempts=3, sleep=lambda s: None, before_sleep=hook)(flaky([Busy()] * 2))
    assert seen == [(1, "busy", 0.05), (2, "busy", pytest.approx(0.1))]


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("soon", None)])
def test_retry_after_header_in_seconds(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    assert (retry_after_seconds("Fri, 01 Jan 2100 00:00:00 GMT") or 0) > 365 * 24 * 3600


# ------------------------------------------------------------------------------------------- the atomic writer


def test_write_atomic_replaces_the_file_and_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.json"
    write_atomic(path, "first\n")
    write_atomic(path, "zweite ✓\n", durable=True)
    write_atomic(tmp_path / "run" / "arrays.bin", b"\x00\x01")
    assert path.read_text(encoding="utf-8") == "zweite ✓\n"
    assert (tmp_path / "run" / "arrays.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["arrays.bin", "metrics.json"], "no temporary left"


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "generations.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half a fi")
        assert path.read_text() == "old\n", "a reader still sees the old file while the new one is written"
        raise RuntimeError("the writer died")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["generations.jsonl"]


def test_the_written_file_has_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "metrics.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644, "readable by others, as open() makes it"
