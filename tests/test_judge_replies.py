"""What the judge's replies score: structured output asked for, prose read carefully, nothing guessed or cached.

End to end through the real google-genai SDK against the loopback fake Gemini server (tests/fake_gemini.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fake_gemini import FakeGemini, Request, Response, reply
from test_judge import KEY, make_cfg, rows

from tasks.judge.scoring import JUDGE_FILE, score_generations
from tasks.judge.settings import JudgeSettings

PROSE = "On a scale of 0 to 100, I give it 85."
LISTED = "1. The response is correct.\n2. It is concise.\nScore: 90"
AMBIGUOUS = "Score: 60. On reflection, Score: 70."


def no_text(request: Request) -> Response:
    """A candidate without text parts (e.g. stopped by a safety filter): the SDK's `.text` is None."""
    return Response(200, {"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "SAFETY"}]})


def replying(table: dict[str, object]):
    def respond(request: Request) -> Response:
        for response, answer in table.items():
            if f"`{response}`" in request.prompt:
                return answer(request) if callable(answer) else reply(str(answer))
        raise AssertionError(f"unexpected prompt {request.prompt!r}")

    return respond


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    return KEY


def test_prose_json_and_empty_replies_score_or_fail_and_only_scores_are_cached(tmp_path: Path, api_key: str):
    table = {"prose": PROSE, "listed": LISTED, "json": '{"score": 77}', "empty": "", "none": no_text,
             "ambiguous": AMBIGUOUS}  # fmt: skip
    with FakeGemini(replying(table)) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url))
        summary = score_generations(rows(*table), settings, tmp_path / "a", objective_needs_judge=False)
        bodies = [r.body for r in server.requests]

    items = [json.loads(line) for line in (tmp_path / "a" / JUDGE_FILE).read_text().splitlines()]
    assert [item["judge_scores"] for item in items] == [[85], [90], [77], [None], [None], [None]]
    assert summary["judge_n_parse_failures"] == 3 and summary["judge_n_scored"] == 3
    assert summary["judge_mean"] == pytest.approx((85 + 90 + 77) / 3)
    # every request asked for structured output: an object with an integer score 0-100
    for body in bodies:
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        schema = config["responseSchema"]
        assert schema["required"] == ["score"]
        score = schema["properties"]["score"]
        assert score["type"].upper() == "INTEGER" and (score["minimum"], score["maximum"]) == (0, 100)

    # replies without a score were not cached: the next run asks for exactly those again, and only those
    again = {name: "50" for name in table}
    with FakeGemini(replying(again)) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url))
        summary = score_generations(rows(*table), settings, tmp_path / "b", objective_needs_judge=False)
        asked = sorted(next(n for n in table if f"`{n}`" in r.prompt) for r in server.requests)
    assert asked == ["ambiguous", "empty", "none"]
    items = [json.loads(line) for line in (tmp_path / "b" / JUDGE_FILE).read_text().splitlines()]
    assert [item["judge_scores"] for item in items] == [[85], [90], [77], [50], [50], [50]]
    assert summary["judge_n_parse_failures"] == 0


def test_a_gateway_without_structured_output_gets_plain_requests_and_careful_parsing(tmp_path: Path, api_key: str):
    table = {"prose": PROSE, "listed": LISTED}
    with FakeGemini(replying(table)) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "structured_output=false"))
        summary = score_generations(rows(*table), settings, tmp_path, objective_needs_judge=False)
        bodies = [r.body for r in server.requests]
    assert summary["judge_mean"] == pytest.approx(87.5)
    assert all("responseMimeType" not in b["generationConfig"] for b in bodies)
    assert all("responseSchema" not in b["generationConfig"] for b in bodies)


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("85", 85), ("  40\n", 40), ("**85**", 85), ("85.", 85), ("0", 0), ("100", 100),
        ('{"score": 85}', 85), ('```json\n{"score": 85}\n```', 85), ('{"score": 85, "reason": "fine"}', 85),
        ('{"score": 101}', None), ('{"score": 8.5}', None), ('{"score": true}', None), ('{"rating": 85}', None),
        ('{"score": ', None),
        (PROSE, 85), (LISTED, 90), ("Score: 85/100", 85), ("85/100", 85), ("I rate it 85 out of 100.", 85),
        ("The response covers the main points but misses one detail.\n\n75", 75),
        ("It misses 2 of the 3 facts. Final score: 40", 40), ("score of 55", 55), ("Rating: 60/100.", 60),
        (AMBIGUOUS, None), ("It gets 70 or maybe 80.", None), ("7/10", None), ("4/5", None), ("Score: 8.5", None),
        ("eighty", None), ("", None), ("   ", None), (None, None), ("8.5", None), ("-5", None), ("150", None),
        ("Score: 150", None),
    ],
)  # fmt: skip
def test_parse_score_takes_the_score_a_reply_gives_and_refuses_to_guess(text, score):
    from tasks.judge.replies import parse_score

    assert parse_score(text) == score


def test_a_disabled_judge_is_an_info_line_not_a_warning(tmp_path: Path, api_key: str, caplog):
    settings = JudgeSettings.from_config(make_cfg(tmp_path, None, "enabled=false"))
    with caplog.at_level(logging.INFO, logger="tasks.judge"):
        summary = score_generations(rows("a"), settings, tmp_path, objective_needs_judge=False)
    assert summary["judge_status"] == "skipped: judge.enabled=false"
    judge_lines = [r for r in caplog.records if r.name == "tasks.judge"]
    assert not [r for r in judge_lines if r.levelno >= logging.WARNING]
    assert any("judge.enabled=false" in r.getMessage() for r in judge_lines)


def test_a_gateway_rejecting_the_schema_says_how_to_turn_it_off(tmp_path: Path, api_key: str):
    from fake_gemini import error

    with FakeGemini(lambda r: error(400) if "responseSchema" in r.body["generationConfig"] else reply("70")) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "concurrency=1"))
        summary = score_generations(rows("a", "b"), settings, tmp_path / "a", objective_needs_judge=False)
        assert len(server.requests) == 1  # the same request setup fails for all: stop at once
        assert "judge.structured_output=false" in str(summary["judge_status"])
        plain = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "structured_output=false"))
        assert score_generations(rows("a", "b"), plain, tmp_path / "b", objective_needs_judge=False)["judge_mean"] == 70
