"""Responses for the judge: the stop rules on token streams, and batched generation with the real tiny `model.GPT`.

To make greedy generation predictable, the tiny model is rewired into a "successor machine": every block adds
nothing to the residual stream, so the last hidden state is the last token's embedding, and the (untied) LM head
maps that embedding to a chosen next token. The model then writes a known continuation after any prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_gemini import FakeGemini, reply

from model import GPT
from model.gpt2 import GPTConfig
from tasks.alpaca import format_prompt
from tasks.config.options import option_config
from tasks.judge import evaluate_generations
from tasks.judge.generation import GENERATIONS_FILE, cut_response, generate_responses, read_jsonl
from tasks.judge.scoring import JUDGE_FILE
from tasks.judge.settings import GenerationSettings
from tasks.tokenizer import EOT_ID, get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GREEDY = GenerationSettings(max_new_tokens=24, temperature=0.0, top_k=None, top_p=None, batch_size=4)
RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Rewrite in passive voice.", "input": "The cat chased the mouse.", "output": "The mouse..."},
    {"instruction": "Say something.", "input": "", "output": "Paris is nice."},
]


@pytest.fixture(scope="module")
def enc():
    return get_tokenizer()


def stream(enc, text: str) -> tuple[list[int], list[bytes]]:
    tokens = enc.encode(text, allowed_special="all")
    return tokens, [enc.decode_single_token_bytes(t) for t in tokens]


@pytest.mark.parametrize(
    ("generated", "text", "reason", "kept"),
    [
        (" Paris is nice.<|endoftext|>### Instruction: more", "Paris is nice.", "eos", " Paris is nice."),
        ("Paris.\n\n### Instruction:\nWrite a poem.<|endoftext|>", "Paris.", "instruction_header", "Paris.\n\n"),
        ("Paris. ### Instruction: again", "Paris.", "instruction_header", "Paris."),
        (" Paris is", "Paris is", "max_new_tokens", " Paris is"),
        ("<|endoftext|>", "", "eos", ""),
        ("### Instruction:\nx", "", "instruction_header", ""),
    ],
)
def test_stop_rules_on_token_streams(enc, generated: str, text: str, reason: str, kept: str) -> None:
    tokens, token_bytes = stream(enc, generated)
    cut = cut_response(tokens, token_bytes, EOT_ID)
    assert (cut.text, cut.stop_reason) == (text, reason)
    assert enc.decode(tokens[: cut.n_tokens]) == kept  # the count covers the kept tokens only


def successor_model(enc, chain: list[int]) -> GPT:
    """The real tiny GPT, rewired so that greedy decoding after a prompt ending in "\\n" emits `chain`."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_preset("tiny"))
    transitions = list(zip([enc.encode("\n")[0], *chain[:-1]], chain, strict=True))
    sources = sorted({a for a, _ in transitions})
    assert len(sources) <= gpt.config.n_embd
    with torch.no_grad():
        for block in gpt.transformer.h:  # each block adds nothing to the residual stream
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        gpt.transformer.wpe.weight.zero_()
        gpt.transformer.wte.weight.zero_()
        head = torch.zeros_like(gpt.transformer.wte.weight)
        for slot, token in enumerate(sources):
            gpt.transformer.wte.weight[token, slot] = 10.0
        for a, b in transitions:
            head[b, sources.index(a)] += 10.0  # logit of b is high exactly when the last token is a
        gpt.lm_head.weight = torch.nn.Parameter(head)  # untied from wte
    return gpt


def test_greedy_generation_stops_at_a_new_instruction_header(enc) -> None:
    chain = enc.encode(" Paris is nice. ### Instruction: more")
    gpt = successor_model(enc, [*chain, chain[-1]])
    rows = generate_responses(gpt, RECORDS, GREEDY, device="cpu")
    # three prompts of different lengths in one left-padded batch all give the same continuation
    assert [row["response"] for row in rows] == ["Paris is nice."] * 3
    assert {row["stop_reason"] for row in rows} == {"instruction_header"}
    assert {row["response_tokens"] for row in rows} == {len(enc.encode(" Paris is nice."))}
    assert [row["prompt_tokens"] for row in rows] == [
        len(enc.encode(format_prompt(r["instruction"], r["input"]))) for r in RECORDS
    ]
    assert [row["simple"] for row in rows] == [False, True, False]
    assert [row["output"] for row in rows] == [r["output"] for r in RECORDS]


def test_greedy_generation_stops_at_end_of_text(enc) -> None:
    gpt = successor_model(enc, [*enc.encode(" Paris is"), EOT_ID])
    gpt.train()
    one_by_one = GenerationSettings(max_new_tokens=24, temperature=0.0, top_k=None, top_p=None, batch_size=1)
    rows = generate_responses(gpt, RECORDS, one_by_one, device="cpu")
    assert [(row["response"], row["stop_reason"], row["response_tokens"]) for row in rows] == [
        ("Paris is", "eos", 2)
    ] * 3
    assert gpt.training  # the caller's mode is restored


def test_evaluate_generations_writes_every_output(enc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's entry point: generate, then judge through the SDK, into the run folder."""
    monkeypatch.setenv("GEMINI_API_KEY", "k-generation-test")
    gpt = successor_model(enc, [*enc.encode(" Paris."), EOT_ID])
    cfg = option_config("judge", "gemini")
    cfg.cache_dir = str(tmp_path / "cache")
    cfg.generation.max_new_tokens = 8
    with FakeGemini(lambda r: reply("90" if "`Paris.`" in r.prompt else "0")) as server:
        cfg.base_url = server.base_url
        summary = evaluate_generations(gpt, RECORDS, cfg, tmp_path, device="cpu", objective_needs_judge=True)
        assert len(server.requests) == 3
    generations = read_jsonl(tmp_path / GENERATIONS_FILE)
    assert [g["response"] for g in generations] == ["Paris."] * 3
    assert summary["judge_mean"] == 90 and summary["judge_status"] == "ok"
    assert summary["exact_match"] == 0.0 and summary["exact_match_n"] == 1  # record 1 is the only "simple" one
    items = [json.loads(line) for line in (tmp_path / JUDGE_FILE).read_text().splitlines()]
    assert items[0]["rouge_l"] == 1.0 and items[2]["rouge_l"] == pytest.approx(0.5)


def test_bad_records_and_budgets_fail_before_generating(enc) -> None:
    gpt = successor_model(enc, [EOT_ID])
    with pytest.raises(ValueError, match=r"record 1 must have string fields .*'output': 'NoneType'"):
        generate_responses(gpt, [RECORDS[0], {"instruction": "x", "input": ""}], GREEDY, device="cpu")
    too_long = GenerationSettings(max_new_tokens=5000, temperature=0.0, top_k=None, top_p=None, batch_size=1)
    with pytest.raises(ValueError, match="max_new_tokens < n_positions` must hold, but got max_new_tokens=5000"):
        generate_responses(gpt, RECORDS, too_long, device="cpu")
