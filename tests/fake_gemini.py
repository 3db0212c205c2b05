"""A fake Gemini REST endpoint on 127.0.0.1 that tests script, for the real `google-genai` SDK to talk to.

It answers `POST /{version}/models/{model}:generateContent` with a `GenerateContentResponse` or an error body shaped
like Google's (`{"error": {code, message, status, details}}`, with a `RetryInfo` detail when asked), records every
request (prompt, model, key header, arrival time) and counts the requests in flight at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+):generateContent$")
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
           500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip


@dataclass(frozen=True)
class Request:
    """What the server saw: `n` is this prompt's call number (1 = first time this exact prompt arrived)."""

    prompt: str
    model: str
    api_key: str | None
    body: dict[str, Any]
    n: int
    arrived: float


@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def reply(text: str) -> Response:
    """A successful generateContent answer with one text part."""
    candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}
    return Response(200, {"candidates": [candidate], "modelVersion": "fake"})


def error(code: int, *, retry_delay: str | None = None, retry_after: str | None = None) -> Response:
    """An error body as Gemini sends it; `retry_delay` adds a RetryInfo ("7s"), `retry_after` the header."""
    details = []
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
    body = {"error": {"code": code, "message": f"fake {code}", "status": _STATUS.get(code, "UNKNOWN"),
                      "details": details}}  # fmt: skip
    return Response(code, body, {"Retry-After": retry_after} if retry_after is not None else {})


Responder = Callable[[Request], Response]


class FakeGemini:
    """Start with `with FakeGemini(responder) as server:`; point the SDK at `server.base_url`."""

    def __init__(self, responder: Responder | None = None, *, delay_s: float = 0.0) -> None:
        self.responder = responder or (lambda request: reply("85"))
        self.delay_s = delay_s
        self.requests: list[Request] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def prompts(self) -> list[str]:
        with self._lock:
            return [r.prompt for r in self.requests]

    def __enter__(self) -> FakeGemini:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handle(self, path: str, headers: Any, raw: bytes) -> Response:
        match = _PATH.match(path)
        if match is None:
            return Response(404, {"error": {"code": 404, "message": f"no route {path}", "status": "NOT_FOUND"}})
        body = json.loads(raw or b"{}")
        prompt = "".join(p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", []))
        with self._lock:
            self._calls[prompt] += 1
            request = Request(prompt, match["model"], headers.get("x-goog-api-key"), body, self._calls[prompt],
                              time.monotonic())  # fmt: skip
            self.requests.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return self.responder(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                response = fake._handle(self.path.split("?")[0], self.headers, raw)
                data = json.dumps(response.body).encode()
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
