"""The Gemini judge end to end: the real google-genai SDK against a fake Gemini server on 127.0.0.1.

Nothing of ours is mocked: `score_generations` builds prompts, the SDK sends them over HTTP, the fake server answers
as Gemini would (replies, 429 with RetryInfo, 500s, 403) and counts what it received.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from fake_gemini import FakeGemini, Request, error, reply
from omegaconf import DictConfig, OmegaConf

from tasks.config.options import option_config
from tasks.judge import JudgeUnavailableError, judge_preflight
from tasks.judge.cli import main
from tasks.judge.scoring import JUDGE_FILE, SUMMARY_FILE, format_judge_input, score_generations
from tasks.judge.settings import JudgeConfigError, JudgeSettings

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-9f3c2b1e7a5d"  # unique, so a leak into any file is findable


def make_cfg(tmp_path: Path, base_url: str | None, *overrides: str) -> DictConfig:
    """conf/judge/gemini.yaml with the cache in tmp_path, the fake server, small backoff; then `overrides`."""
    cfg = option_config("judge", "gemini")
    cfg.cache_dir = str(tmp_path / "cache")
    cfg.base_url = base_url
    cfg.timeout_s = 20
    cfg.retry.merge_with(
        {"max_attempts": 3, "initial_delay_s": 0.01, "max_delay_s": 2.0, "exp_base": 2.0, "jitter_s": 0.01}
    )
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]


def rows(*responses: str) -> list[dict]:
    """Generations as generation.py writes them; odd rows have an input (the "simple" half)."""
    return [
        {
            "index": i,
            "instruction": f"Rewrite sentence {i} in passive voice." if i % 2 else f"Write a tweet about topic {i}.",
            "input": f"The cat chased mouse {i}." if i % 2 else "",
            "output": f"Mouse {i} was chased by the cat." if i % 2 else f"Topic {i} matters! #news",
            "response": response,
            "simple": bool(i % 2),
        }
        for i, response in enumerate(responses)
    ]


def by_response(table: dict[str, str]):
    """A responder replying according to which response text the prompt carries."""

    def respond(request: Request) -> object:
        for response, text in table.items():
            if f"`{response}`" in request.prompt:
                return reply(text)
        return reply("50")

    return respond


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    return KEY


def test_replies_parse_to_scores_and_failures_are_excluded(tmp_path: Path, api_key: str) -> None:
    table = {"resp-a": "85", "resp-b": "Score: 85/100", "resp-c": "eighty", "resp-d": "  40\n"}
    with FakeGemini(by_response(table)) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url))
        summary = score_generations(rows(*table), settings, tmp_path / "run", objective_needs_judge=True)
        seen = list(server.requests)

    items = [json.loads(line) for line in (tmp_path / "run" / JUDGE_FILE).read_text().splitlines()]
    assert [item["judge_scores"] for item in items] == [[85], [85], [None], [40]]
    assert [item["judge_parse_failures"] for item in items] == [0, 0, 1, 0]
    assert items[2]["judge_replies"] == ["eighty"] and items[2]["judge_mean"] is None
    # a parse failure is excluded, never counted as 0
    assert summary["judge_mean"] == pytest.approx(statistics.fmean([85, 85, 40]))
    assert summary["judge_std"] == pytest.approx(statistics.pstdev([85, 85, 40]))
    assert (summary["judge_n_scored"], summary["judge_n_failed"], summary["judge_n_parse_failures"]) == (3, 1, 1)
    assert summary["judge_status"] == "ok"
    assert summary["judge_model"] == settings.model
    assert summary["judge_prompt_sha256"] == settings.prompt_sha256

    # what Gemini received: the report's prompt around the Alpaca input, the reference and the response
    assert len(seen) == 4 and {r.api_key for r in seen} == {KEY} and {r.model for r in seen} == {settings.model}
    assert {r.body["generationConfig"]["temperature"] for r in seen} == {0.0}
    row = rows(*table)[1]
    expected = settings.prompt_template.format(
        input=format_judge_input(row["instruction"], row["input"]), output=row["output"], response="resp-b"
    )
    assert expected in {r.prompt for r in seen}
    assert "### Instruction:" in expected and "### Input:" in expected and "### Response:" not in expected
    assert expected.endswith("Respond with the integer number only.")

    written = json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    assert written["prompt_template"] == settings.prompt_template
    assert written["prompt_sha256"] == settings.prompt_sha256 == summary["judge_prompt_sha256"]


def test_deterministic_metrics_are_recorded_beside_the_judge(tmp_path: Path, api_key: str) -> None:
    data = rows("A tweet about topic 0.", "Mouse 1 was chased by the cat.", "nothing useful", "mouse 3 was chased")
    with FakeGemini() as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url))
        summary = score_generations(data, settings, tmp_path, objective_needs_judge=False)
    items = [json.loads(line) for line in (tmp_path / JUDGE_FILE).read_text().splitlines()]
    # exact match only on the simple half (rows with an input): row 1 exact, row 3 not
    assert [item["exact_match"] for item in items] == [None, True, None, False]
    assert summary["exact_match"] == 0.5 and summary["exact_match_n"] == 2
    assert items[1]["rouge_l"] == 1.0 and items[2]["rouge_l"] == 0.0
    assert summary["rouge_l"] == pytest.approx(statistics.fmean(item["rouge_l"] for item in items))


@pytest.mark.parametrize(
    "first",
    [error(429, retry_delay="0.4s"), error(429, retry_after="1"), error(503, retry_delay="0.4s")],
    ids=["retryinfo", "retry-after-header", "503-retryinfo"],
)
def test_rate_limit_with_server_delay_is_retried_after_that_delay(tmp_path: Path, api_key: str, first) -> None:
    with FakeGemini(lambda r: first if r.n == 1 else reply("70")) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url))
        summary = score_generations(rows("resp"), settings, tmp_path, objective_needs_judge=True)
        seen = list(server.requests)
    assert summary["judge_mean"] == 70 and summary["judge_n_failed"] == 0
    assert [r.n for r in seen] == [1, 2]
    # our backoff alone would wait ~0.01-0.02 s: the gap proves the server's delay was honoured
    waited = seen[1].arrived - seen[0].arrived
    asked = 1.0 if first.headers else 0.4
    assert waited >= asked


def test_repeated_500_gives_up_at_the_attempt_cap_and_counts_failures(tmp_path: Path, api_key: str) -> None:
    def respond(request: Request) -> object:
        return error(500) if "`broken`" in request.prompt else reply("60")

    with FakeGemini(respond) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "retry.max_attempts=4"))
        summary = score_generations(rows("fine", "broken", "fine too"), settings, tmp_path, objective_needs_judge=True)
        broken = [r for r in server.requests if "`broken`" in r.prompt]
    assert len(broken) == 4  # the cap, exactly
    assert summary["judge_n_request_failures"] == 1 and summary["judge_n_failed"] == 1
    assert summary["judge_n_scored"] == 2 and summary["judge_mean"] == 60 and summary["judge_status"] == "ok"
    items = [json.loads(line) for line in (tmp_path / JUDGE_FILE).read_text().splitlines()]
    assert items[1]["judge_scores"] == [None] and "gave up after 4 attempts" in items[1]["judge_errors"][0]

    # a failed request is not cached: the next run asks again
    with FakeGemini(lambda r: reply("65")) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url))
        summary = score_generations(rows("fine", "broken", "fine too"), settings, tmp_path, objective_needs_judge=True)
        assert [r.prompt for r in server.requests] == [broken[0].prompt]
    assert summary["judge_n_scored"] == 3 and summary["judge_n_failed"] == 0


def test_all_calls_failing_fails_only_a_judge_objective(tmp_path: Path, api_key: str, caplog) -> None:
    with FakeGemini(lambda r: error(500)) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "retry.max_attempts=2"))
        with caplog.at_level(logging.WARNING, logger="tasks.judge"):
            summary = score_generations(rows("a", "b"), settings, tmp_path / "x", objective_needs_judge=False)
        with pytest.raises(JudgeUnavailableError, match="objective=judge needs the LLM judge, but no reply"):
            score_generations(rows("a", "b"), settings, tmp_path / "y", objective_needs_judge=True)
    assert "judge_mean" not in summary and summary["judge_n_failed"] == 2
    assert summary["judge_status"].startswith("failed") and "rouge_l" in summary
    assert len([r for r in caplog.records if r.name == "tasks.judge" and r.levelno == logging.WARNING]) == 1
    assert (tmp_path / "y" / JUDGE_FILE).is_file()  # results are written before the trial fails


def test_never_more_than_the_configured_requests_in_flight(tmp_path: Path, api_key: str) -> None:
    with FakeGemini(lambda r: reply("90"), delay_s=0.15) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "concurrency=3"))
        summary = score_generations(rows(*[f"r{i}" for i in range(12)]), settings, tmp_path, objective_needs_judge=True)
        assert len(server.requests) == 12
        assert 1 < server.max_in_flight <= 3
    assert summary["judge_n_scored"] == 12


def test_second_run_hits_the_cache(tmp_path: Path, api_key: str) -> None:
    data = rows("one", "two", "three")
    with FakeGemini(by_response({"one": "10", "two": "20", "three": "30"})) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url))
        first = score_generations(data, settings, tmp_path / "a", objective_needs_judge=True)
        n_first = len(server.requests)
        second = score_generations(data, settings, tmp_path / "b", objective_needs_judge=True)
        assert len(server.requests) == n_first == 3  # no new requests
        # another judge model, or another repeat index, is a different key
        other = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "model=gemini-other"))
        score_generations(data, other, tmp_path / "c", objective_needs_judge=True)
        assert len(server.requests) == 6
        twice = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "repeats=2"))
        score_generations(data, twice, tmp_path / "d", objective_needs_judge=True)
        assert len(server.requests) == 9
    assert {k: first[k] for k in ("judge_mean", "judge_std")} == {k: second[k] for k in ("judge_mean", "judge_std")}
    items = [json.loads(line) for line in (tmp_path / "b" / JUDGE_FILE).read_text().splitlines()]
    assert [item["judge_cached"] for item in items] == [1, 1, 1]


def test_repeats_give_per_item_and_overall_mean_and_std(tmp_path: Path, api_key: str) -> None:
    # the judge is noisy: this exact prompt gets 60, then 70, then 80
    with FakeGemini(lambda r: reply(str(50 + 10 * r.n))) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "repeats=3", "concurrency=1"))
        summary = score_generations(rows("x", "y"), settings, tmp_path, objective_needs_judge=True)
        assert len(server.requests) == 6
    items = [json.loads(line) for line in (tmp_path / JUDGE_FILE).read_text().splitlines()]
    for item in items:
        assert sorted(item["judge_scores"]) == [60, 70, 80]
        assert item["judge_mean"] == 70 and item["judge_std"] == pytest.approx(statistics.pstdev([60, 70, 80]))
    assert summary["judge_mean"] == 70 and summary["judge_std"] == 0.0
    assert summary["judge_repeat_std"] == pytest.approx(statistics.pstdev([60, 70, 80]))
    assert summary["judge_n_scored"] == 6 and summary["judge_repeats"] == 3


def test_a_rejected_key_stops_the_remaining_requests(tmp_path: Path, api_key: str) -> None:
    with FakeGemini(lambda r: error(403)) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "concurrency=1"))
        with pytest.raises(JudgeUnavailableError, match="403"):
            score_generations(rows(*"abcdefgh"), settings, tmp_path, objective_needs_judge=True)
        assert len(server.requests) == 1  # not 8 items x 3 attempts


def test_a_server_delay_beyond_the_cap_stops_the_judge(tmp_path: Path, api_key: str) -> None:
    with FakeGemini(lambda r: error(429, retry_delay="3600s")) as server:
        settings = JudgeSettings.from_config(make_cfg(tmp_path, server.base_url, "concurrency=1"))
        summary = score_generations(rows(*"abcd"), settings, tmp_path, objective_needs_judge=False)
        assert len(server.requests) == 1
    assert "3600s" in str(summary["judge_status"]) and summary["judge_n_request_failures"] == 4


def test_unreachable_service_keeps_the_deterministic_metrics(tmp_path: Path, api_key: str) -> None:
    with FakeGemini() as server:
        url = server.base_url  # closed after this block: connections are refused
    settings = JudgeSettings.from_config(make_cfg(tmp_path, url, "retry.max_attempts=2"))
    summary = score_generations(rows("a", "b", "c"), settings, tmp_path, objective_needs_judge=False)
    assert summary["judge_status"].startswith("failed: unreachable after 2 attempts")
    assert summary["rouge_l"] >= 0 and "judge_mean" not in summary


def test_no_key_skips_the_judge_unless_the_objective_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    cfg = make_cfg(tmp_path, "http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="tasks.judge"):
        summary = score_generations(rows("a"), JudgeSettings.from_config(cfg), tmp_path, objective_needs_judge=False)
    assert summary["judge_status"].startswith("skipped: no API key: set GOOGLE_API_KEY or GEMINI_API_KEY")
    assert "judge_mean" not in summary and "rouge_l" in summary
    assert sum("LLM judge skipped" in r.getMessage() for r in caplog.records) == 1
    # a judge objective fails before any training or generation
    with pytest.raises(JudgeUnavailableError, match="no API key"):
        judge_preflight(cfg, objective_needs_judge=True)
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    assert judge_preflight(cfg, objective_needs_judge=True).model == cfg.model
    with pytest.raises(JudgeUnavailableError, match=r"judge\.enabled=false"):
        judge_preflight(make_cfg(tmp_path, None, "enabled=false"), objective_needs_judge=True)


def test_bad_settings_are_one_error_naming_each_field(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, None, "repeats=0", "concurrency=-1", "retry.max_attempts=0", "generation.top_p=1.5")
    cfg.prompt_template = "Rate {answer} please"
    with pytest.raises(JudgeConfigError) as info:
        JudgeSettings.from_config(cfg)
    message = str(info.value)
    assert "\n" not in message
    for needle in (
        "but got judge.repeats=0",
        "but got judge.concurrency=-1",
        "but got judge.retry.max_attempts=0",
        "but got judge.generation.top_p=1.5",
        "fields must be among {input}, {output}, {response}, but got ['answer']",
        "must contain {response}",
    ):
        assert needle in message
    with pytest.raises(JudgeConfigError, match=r"remove judge\.api_key"):
        JudgeSettings.from_config({**OmegaConf.to_container(make_cfg(tmp_path, None)), "api_key": "x"})


def test_api_key_never_reaches_a_file_or_log(tmp_path: Path, api_key: str, caplog) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows("a", "b", "c")))
    cfg = make_cfg(tmp_path, None)
    # the trial ran without the judge; its saved judge settings are the re-score's base
    saved = OmegaConf.to_container(make_cfg(tmp_path, None, "enabled=false"))
    (run / "metrics.json").write_text(
        json.dumps({"metrics": {"val_perplexity": 12.5, "judge_mean": 1.0}, "config": {"judge": saved}})
    )
    with FakeGemini(by_response({"a": "Score: 77/100", "b": "70", "c": "eighty"})) as server:
        # the re-scoring command, as a user runs it, with overrides; the key only in the environment
        proc = subprocess.run(
            [sys.executable, "-m", "tasks.judge", str(run), f"judge.base_url={server.base_url}", "judge.repeats=2"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert {r.api_key for r in server.requests} == {KEY} and len(server.requests) == 6
        # and in-process, with SDK debug logging on
        with caplog.at_level(logging.DEBUG):
            cfg.base_url = server.base_url
            score_generations(rows("d", "e"), JudgeSettings.from_config(cfg), tmp_path / "again",
                              objective_needs_judge=False)  # fmt: skip
    assert "mean 73.5" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["val_perplexity"] == 12.5 and metrics["judge_mean"] == pytest.approx(73.5)
    assert metrics["judge_n_parse_failures"] == 2 and metrics["judge_repeats"] == 2

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"judge.jsonl", "judge_summary.json", "metrics.json", "judge_cache.sqlite"}
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in proc.stdout + proc.stderr
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_rescore_command_rejects_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert main([str(run)]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: RUN_DIR must hold one of val_generations.jsonl, test_generations.jsonl, generations.jsonl from an "
        f"alpaca trial, but got run_dir={str(run)!r} without any"
    )
    (run / "generations.jsonl").write_text(json.dumps(rows("a")[0]) + "\n")
    assert main([str(run), "judge.modle=x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: every key must be a setting a trial reads, but got judge.modle=x (did you mean judge.model?)"
    assert main([str(run), "model=x"]) == 1
    assert "overrides must look like judge.<key>=<value>, but got 'model=x'" in capsys.readouterr().err
