"""Loading through huggingface_hub's real code path: a hand-populated cache under HF_HOME with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from model_refs import TINY, hf_gpt2, populate_hub_cache, random_ids, save_hf
from transformers import GPT2LMHeadModel

from model import from_pretrained
from model.hub import clear_cache

REPO = "lorasweep-test/tiny-gpt2"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT2LMHeadModel, Path]:
    hf = hf_gpt2(**TINY, seed=5)
    return hf, save_hf(hf, tmp_path_factory.mktemp("tiny_src"))


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private, empty HF_HOME, offline; the in-memory weights of earlier tests are dropped."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_cache()
    yield tmp_path / "hf"
    clear_cache()


def test_offline_cache_gives_transformers_logits(reference: tuple[GPT2LMHeadModel, Path], hf_home: Path) -> None:
    hf, src = reference
    commit = populate_hub_cache(hf_home / "hub", REPO, src)
    ids = random_ids(2, 10)
    with torch.no_grad():
        expected = hf(ids).logits
        by_main = from_pretrained(REPO).eval()(ids)
        clear_cache()
        by_commit = from_pretrained(REPO, revision=commit).eval()(ids)
    torch.testing.assert_close(by_main, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(by_commit, expected, atol=1e-4, rtol=0)


def test_second_load_reads_nothing_and_cannot_see_a_trials_changes(
    reference: tuple[GPT2LMHeadModel, Path], hf_home: Path
) -> None:
    hf, src = reference
    populate_hub_cache(hf_home / "hub", REPO, src)
    first = from_pretrained(REPO, num_classes=2)
    with torch.no_grad():
        for p in first.parameters():
            p.mul_(0.0)
    shutil.rmtree(hf_home / "hub")  # the files are gone: only memory can serve the next load
    second = from_pretrained(REPO).eval()
    ids = random_ids(1, 6)
    with torch.no_grad():
        torch.testing.assert_close(second(ids), hf(ids).logits, atol=1e-4, rtol=0)
    clear_cache()
    with pytest.raises(FileNotFoundError):
        from_pretrained(REPO)


def test_uncached_repo_offline_says_how_to_get_it(hf_home: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        from_pretrained("gpt2-medium")
    message = str(info.value)
    assert "\n" not in message
    assert "openai-community/gpt2-medium" in message and "HF_HUB_OFFLINE=1" in message
    assert "`hf download openai-community/gpt2-medium config.json model.safetensors`" in message
    assert "local folder" in message


def test_uncached_revision_offline_names_it(reference: tuple[GPT2LMHeadModel, Path], hf_home: Path) -> None:
    populate_hub_cache(hf_home / "hub", REPO, reference[1])
    with pytest.raises(FileNotFoundError, match=r"revision v2\.0.*--revision v2\.0"):
        from_pretrained(REPO, revision="v2.0")
