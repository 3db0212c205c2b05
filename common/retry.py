"""One way to try again: tenacity underneath, the project's backoff rule and a server's retry hint on top.

A caller names the errors worth another try (`retry_on`), how long to keep at it (a number of attempts, a time
budget, or both) and how to wait between attempts (`Backoff`, or any tenacity wait). When the server says how long to
wait (HTTP `Retry-After`, Gemini's `RetryInfo`), `Backoff.hint` reads it from the error: the wait is then never
shorter than that, and a hint longer than `Backoff.max_s` ends the retries at once (a spent quota, not a blip).
When the retries end, the last error itself is raised, as if it had been the only try.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

import tenacity
from tenacity import RetryCallState

T = TypeVar("T")
Wait = Callable[[RetryCallState], float]


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait after failed attempt n: min(max_s, initial_s · exp_base^(n-1) + U(0, jitter_s)) ·
    (1 + U(0, spread)), and never less than the server's hint plus the same jitter.

    `jitter_s` adds seconds inside the cap; `spread` stretches the capped wait by up to that share. Both spread out
    clients that failed together, so they do not all come back at the same moment.
    """

    initial_s: float
    max_s: float
    exp_base: float = 2.0
    jitter_s: float = 0.0
    spread: float = 0.0
    hint: Callable[[BaseException], float | None] | None = None

    def __call__(self, state: RetryCallState) -> float:
        jitter = random.uniform(0.0, self.jitter_s)
        delay = min(self.max_s, self.initial_s * self.exp_base ** (state.attempt_number - 1) + jitter)
        delay *= 1.0 + self.spread * random.random()
        error = state.outcome.exception() if state.outcome is not None else None
        asked = self.server_delay(error) if error is not None else None
        return delay if asked is None else max(delay, asked + jitter)

    def server_delay(self, error: BaseException) -> float | None:
        """What the server asked to wait before the next try, when `hint` can tell."""
        return self.hint(error) if self.hint is not None else None

    def refuses(self, error: BaseException) -> bool:
        """The server asks to wait longer than `max_s`: retrying now is pointless."""
        asked = self.server_delay(error)
        return asked is not None and asked > self.max_s


def retrying(
    retry_on: Callable[[BaseException], bool],
    wait: Backoff | Wait,
    *,
    attempts: int | None = None,
    timeout_s: float | None = None,
    sleep: Callable[[float], object] = time.sleep,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """A tenacity `Retrying`: call it with the action, `retrying(...)(action)`.

    Another try follows an exception for which `retry_on` holds (and that a `Backoff` does not refuse), while fewer
    than `attempts` tries were made and less than `timeout_s` seconds went by; the last wait is cut to the time
    left. `sleep` may be interruptible (`threading.Event.wait`); `before_sleep` sees each failure before its wait
    (`state.attempt_number`, `state.outcome.exception()`, `state.next_action.sleep`), for the caller's log line.
    """
    stops = []
    if attempts is not None:
        stops.append(tenacity.stop_after_attempt(attempts))
    if timeout_s is not None:
        stops.append(tenacity.stop_after_delay(timeout_s))

    def retry(error: BaseException) -> bool:
        return retry_on(error) and not (isinstance(wait, Backoff) and wait.refuses(error))

    def seconds(state: RetryCallState) -> float:
        delay = wait(state)
        if timeout_s is not None:
            delay = min(delay, max(0.0, timeout_s - (state.seconds_since_start or 0.0)))
        return delay

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry),
        stop=tenacity.stop_any(*stops) if stops else tenacity.stop_never,
        wait=seconds,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def retry_after_seconds(value: str | None) -> float | None:
    """An HTTP `Retry-After` header in seconds: delta-seconds ("120") or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
