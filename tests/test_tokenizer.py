"""GPT-2 BPE through tiktoken: the right ids, offline from a cache or a file, and clear errors without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.tokenizer import EOT_ID, TokenizerUnavailableError, get_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_hello_world_gives_gpt2_ids() -> None:
    enc = get_tokenizer()
    assert enc.encode_ordinary("Hello, world!") == [15496, 11, 995, 0]
    assert enc.n_vocab == 50257
    assert enc.eot_token == EOT_ID == 50256


def test_reference_tokenizer_agrees(shared_data: Path) -> None:
    """transformers' GPT-2 tokenizer, built from the same vocab.bpe/encoder.json, gives the same ids."""
    from transformers import GPT2Tokenizer

    tok_dir = shared_data.parent / "tokenizer"
    vocab = json.loads((tok_dir / "encoder.json").read_text(encoding="utf-8"))
    lines = (tok_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # first line: a version comment
    reference = GPT2Tokenizer(vocab=vocab, merges=[tuple(line.split()) for line in lines if line])
    text = (shared_data / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8")[:4000]
    assert get_tokenizer().encode_ordinary(text) == reference.encode(text)


def test_local_file_matches_tiktoken_cache(shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORASWEEP_TIKTOKEN_FILE", str(shared_dir / "tokenizer" / "gpt2.tiktoken"))
    by_file = get_tokenizer()
    monkeypatch.delenv("LORASWEEP_TIKTOKEN_FILE")
    text = "Identify the correct spelling of the following word.\n\nOcassion <|endoftext|> £5 naïve"
    assert by_file.encode_ordinary(text) == get_tokenizer().encode_ordinary(text)
    assert by_file.encode(text, allowed_special="all")[-4:] == get_tokenizer().encode(text, allowed_special="all")[-4:]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerUnavailableError, match=r"must exist, but got LORASWEEP_TIKTOKEN_FILE=.*nope"):
        get_tokenizer(tmp_path / "nope.tiktoken")


def test_wrong_file_is_rejected(tmp_path: Path) -> None:
    bogus = tmp_path / "gpt2.tiktoken"
    bogus.write_text("SGVsbG8= 0\n")
    with pytest.raises(TokenizerUnavailableError, match=r"must be GPT-2's gpt2\.tiktoken"):
        get_tokenizer(bogus)


def test_offline_without_files_says_what_to_do(tmp_path: Path) -> None:
    """A fresh process with an empty tiktoken cache and no network (a proxy on a closed port) fails in one line."""
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    env.pop("LORASWEEP_TIKTOKEN_FILE", None)
    code = "from tasks.tokenizer import get_tokenizer\ntry:\n get_tokenizer()\nexcept Exception as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    message = out.stdout.strip()
    assert len(message.splitlines()) == 1
    assert "LORASWEEP_TIKTOKEN_FILE=<path>/gpt2.tiktoken" in message
    assert "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4" in message
