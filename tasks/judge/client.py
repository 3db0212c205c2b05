"""Ask Gemini for scores: bounded concurrency, retries that honour the server's delay, an on-disk cache.

The original report's evaluation was slow because its calls ran one by one into rate limits. Here a thread pool
keeps at most `judge.concurrency` requests in flight; a 429/408/5xx or a dropped connection is retried with
exponential backoff plus jitter, waiting at least what the server asks for (the `RetryInfo.retryDelay` of a Gemini
error body, else the `Retry-After` header), up to `judge.retry.max_attempts` attempts. The SDK's own retries stay off
(`HttpOptions.retry_options=None` means one attempt), since they ignore the server's delay and would multiply ours.
Errors that every request would hit (bad key, unknown model, an exhausted daily quota, an unreachable host) stop
the remaining requests at once instead of retrying each of them.

Replies: with `judge.structured_output` (the default) Gemini is asked for JSON, `{"score": <integer 0-100>}`
(`response_schema`); `tasks.judge.replies.parse_score` reads that, or a text reply from a gateway without it. Only a
reply that gives a score is cached: an empty or unreadable one is asked again next time.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from google import genai
from google.genai import errors, types
from tenacity import RetryCallState
from tqdm.auto import tqdm

from common.retry import Backoff, retry_after_seconds, retrying
from tasks.judge.cache import JudgeCache, cache_key
from tasks.judge.replies import parse_score
from tasks.judge.settings import JudgeSettings

log = logging.getLogger(__name__)

# structured output: the reply is {"score": <integer 0-100>}
SCORE_FORMAT: dict[str, Any] = {
    "response_mime_type": "application/json",
    "response_schema": types.Schema(
        type=types.Type.OBJECT,
        properties={"score": types.Schema(type=types.Type.INTEGER, minimum=0, maximum=100)},
        required=["score"],
    ),
}
RETRYABLE_CODES = frozenset({408, 429, 500, 502, 503, 504})
# the same request setup fails for every item: stop instead of sending the rest
FATAL_CODES = frozenset({400, 401, 403, 404})
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    importlib.import_module(name).TransportError
    for name in ("httpx2", "httpx")
    if importlib.util.find_spec(name) is not None
)


def server_retry_delay(exc: errors.APIError) -> float | None:
    """Seconds the server asked us to wait: Gemini's `RetryInfo.retryDelay` ("7s"), else `Retry-After`."""
    details = exc.details if isinstance(exc.details, dict) else {}
    body = details.get("error", details)
    items = body.get("details") if isinstance(body, dict) else None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            delay = _duration_seconds(item.get("retryDelay"))
            if delay is not None:
                return delay
    headers = getattr(exc.response, "headers", None)
    return retry_after_seconds(headers.get("retry-after") if headers is not None else None)


def _duration_seconds(value: Any) -> float | None:
    """A protobuf Duration in JSON ("7s", "0.500s") or as {seconds, nanos}."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            return max(0.0, float(value[:-1]))
        except ValueError:
            return None
    if isinstance(value, dict):
        return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
    return None


class _NotSent(Exception):
    """Another call already stopped the judge: this one is not sent."""


def _retryable(error: BaseException) -> bool:
    """A 429/408/5xx or a dropped connection; any other error is the item's answer at once."""
    if isinstance(error, errors.APIError):
        return error.code in RETRYABLE_CODES
    return isinstance(error, _TRANSPORT_ERRORS)


def _server_hint(error: BaseException) -> float | None:
    return server_retry_delay(error) if isinstance(error, errors.APIError) else None


def _describe(error: BaseException) -> str:
    if isinstance(error, errors.APIError):
        return f"HTTP {error.code} {error.status or ''}: {error.message or ''}".strip()
    return f"{type(error).__name__}: {error}"


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.debug("judge call attempt %d failed (%s); retrying in %.2fs", state.attempt_number, _describe(error), delay)


@dataclass(frozen=True)
class JudgeReply:
    """One (item, repeat) call: the parsed score, the raw reply, or why there is none."""

    score: int | None
    reply: str | None
    error: str | None
    cached: bool
    attempts: int


class GeminiJudge:
    """Scores prompts with one Gemini model; thread-safe, reusable for several runs."""

    def __init__(self, settings: JudgeSettings, api_key: str, cache: JudgeCache | None = None) -> None:
        self.settings = settings
        self.cache = cache
        http_options = types.HttpOptions(
            base_url=settings.base_url,
            api_version=settings.api_version,
            timeout=int(settings.timeout_s * 1000),  # milliseconds
            retry_options=None,  # one attempt per call: retries are ours (see module docstring)
        )
        # the key goes to the SDK only; it is sent as a header and never logged or stored by us
        self._client = genai.Client(api_key=api_key, vertexai=False, http_options=http_options)
        thinking = None
        if settings.thinking_level:
            thinking = types.ThinkingConfig(thinking_level=settings.thinking_level.upper())
        self._config = types.GenerateContentConfig(
            temperature=0.0,
            candidate_count=1,
            thinking_config=thinking,
            **(SCORE_FORMAT if settings.structured_output else {}),
            # no tools: without this the SDK logs an "AFC is enabled" line per request
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        for name in ("httpx", "httpx2"):  # one INFO line per request would bury the progress bar
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self._stop = threading.Event()
        self._stop_lock = threading.Lock()
        self.unavailable_reason: str | None = None
        self._pace_lock = threading.Lock()
        self._next_start = 0.0

    def score(self, prompts: list[str], repeats: int) -> list[list[JudgeReply]]:
        """Score every prompt `repeats` times; `result[i][r]` is prompt i's r-th call."""
        model = self.settings.model
        units = [(i, r) for i in range(len(prompts)) for r in range(repeats)]
        fmt = "json" if self.settings.structured_output else None
        keys = {(i, r): cache_key(model, prompts[i], r, response_format=fmt) for i, r in units}
        cached = self.cache.get_many(list(keys.values())) if self.cache is not None else {}
        results: dict[tuple[int, int], JudgeReply] = {}
        for unit in units:
            reply = cached.get(keys[unit])
            score = parse_score(reply)
            if score is not None:  # a reply without a score (an older cache kept those) is asked again
                results[unit] = JudgeReply(score, reply, None, cached=True, attempts=0)
        todo = [unit for unit in units if unit not in results]
        log.info(
            "judge %s: %d calls (%d items x %d), %d from the cache, %d to send with %d in flight",
            model, len(units), len(prompts), repeats, len(results), len(todo), self.settings.concurrency,
        )  # fmt: skip
        failed = sum(1 for r in results.values() if r.score is None)
        with (
            tqdm(total=len(units), initial=len(results), desc="judge", unit="call", dynamic_ncols=True) as bar,
            ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="judge") as pool,
        ):
            futures = {pool.submit(self._call, prompts[i], r, keys[(i, r)]): (i, r) for i, r in todo}
            for future in as_completed(futures):
                reply = future.result()
                results[futures[future]] = reply
                failed += reply.score is None
                bar.set_postfix(failed=failed, refresh=False)
                bar.update()
        return [[results[(i, r)] for r in range(repeats)] for i in range(len(prompts))]

    def _call(self, prompt: str, repeat: int, key: str) -> JudgeReply:
        """One call with retries (`common.retry`); stores a returned reply in the cache."""
        retry = self.settings.retry
        tries = 0

        def send() -> str:
            nonlocal tries
            if self._stop.is_set():
                raise _NotSent
            tries += 1
            self._pace()
            response = self._client.models.generate_content(
                model=self.settings.model, contents=prompt, config=self._config
            )
            return response.text or ""

        backoff = Backoff(
            initial_s=retry.initial_delay_s,
            max_s=retry.max_delay_s,
            exp_base=retry.exp_base,
            jitter_s=retry.jitter_s,
            hint=_server_hint,
        )
        attempts = retrying(
            _retryable, backoff, attempts=retry.max_attempts, sleep=self._stop.wait, before_sleep=_log_retry
        )
        try:
            text = attempts(send)
        except _NotSent:
            return JudgeReply(None, None, f"not sent: {self.unavailable_reason}", False, tries)
        except errors.APIError as exc:
            return JudgeReply(None, None, self._api_failure(exc), False, tries)
        except _TRANSPORT_ERRORS as exc:
            message = _describe(exc)
            self._give_up(f"unreachable after {tries} attempts ({message})")
            return JudgeReply(None, None, f"gave up after {retry.max_attempts} attempts: {message}", False, tries)
        score = parse_score(text)
        if self.cache is not None and score is not None:  # never an empty or unreadable reply: ask again next time
            self.cache.put(key, self.settings.model, repeat, text)
        return JudgeReply(score, text, None, False, tries)

    def _api_failure(self, exc: errors.APIError) -> str:
        """The item's error for an API error the retries ended on; stops every call when no other could succeed."""
        retry = self.settings.retry
        message = _describe(exc)
        if exc.code not in RETRYABLE_CODES:
            if exc.code == 400 and self.settings.structured_output:
                message += "; a gateway without structured output needs judge.structured_output=false"
            if exc.code in FATAL_CODES:
                self._give_up(message)
            return message
        server_delay = server_retry_delay(exc)
        if server_delay is not None and server_delay > retry.max_delay_s:
            self._give_up(
                f"{message}; the server asks to wait {server_delay:.0f}s, more than "
                f"judge.retry.max_delay_s={retry.max_delay_s:g} (quota spent?)"
            )
            return message
        return f"gave up after {retry.max_attempts} attempts: {message}"

    def _pace(self) -> None:
        """Space request starts `60 / requests_per_minute` seconds apart when a pace is set."""
        rpm = self.settings.requests_per_minute
        if rpm is None:
            return
        with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + 60.0 / rpm
        if start > now:
            self._stop.wait(start - now)

    def _give_up(self, reason: str) -> None:
        with self._stop_lock:
            if self.unavailable_reason is None:
                self.unavailable_reason = reason
                log.warning("judge stopped: %s", reason)
        self._stop.set()

    def close(self) -> None:
        """Release the SDK's HTTP connections."""
        close = getattr(self._client, "close", None)
        if callable(close):
            close()
