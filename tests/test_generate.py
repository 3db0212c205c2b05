"""generate: greedy equals transformers, cache = no cache, left-padded batches = rows alone, stop rules."""

from __future__ import annotations

import pytest
import torch
from model_refs import TINY, hf_gpt2, random_ids, save_hf
from transformers import GPT2LMHeadModel

from model import GPT, GPTConfig, apply_lora, from_pretrained, generate

NEW = 32


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT2LMHeadModel, GPT]:
    hf = hf_gpt2(**TINY, seed=11)
    folder = save_hf(hf, tmp_path_factory.mktemp("tiny_gen"))
    return hf, from_pretrained(folder)


def _left_padded(rows: list[torch.Tensor], pad: int = 50256) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


def test_greedy_equals_transformers(models: tuple[GPT2LMHeadModel, GPT]) -> None:
    hf, gpt = models
    prompt = random_ids(1, 7)
    ours = generate(gpt, prompt, NEW)
    theirs = hf.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=50256)
    assert ours.shape == (1, 7 + NEW)
    assert torch.equal(ours, theirs)


def test_left_padded_batch_equals_each_row_and_transformers(models: tuple[GPT2LMHeadModel, GPT]) -> None:
    hf, gpt = models
    rows = [random_ids(1, n, seed=n)[0] for n in (9, 4, 6)]
    ids, mask = _left_padded(rows)
    batched = generate(gpt, ids, NEW, attention_mask=mask)
    for i, row in enumerate(rows):
        alone = generate(gpt, row[None], NEW)
        assert torch.equal(batched[i, ids.shape[1] :], alone[0, len(row) :]), i
    theirs = hf.generate(
        ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=50256
    )
    assert torch.equal(batched, theirs)


@pytest.mark.parametrize("padded", [False, True])
def test_cache_and_no_cache_give_the_same_tokens(models: tuple[GPT2LMHeadModel, GPT], padded: bool) -> None:
    _, gpt = models
    if padded:
        ids, mask = _left_padded([random_ids(1, n, seed=n)[0] for n in (3, 8)])
    else:
        ids, mask = random_ids(2, 5), None
    cached = generate(gpt, ids, 20, attention_mask=mask)
    recomputed = generate(gpt, ids, 20, attention_mask=mask, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_eos_stops_a_row_and_the_call_ends_when_all_are_done(models: tuple[GPT2LMHeadModel, GPT]) -> None:
    _, gpt = models
    ids = random_ids(2, 6, seed=4)
    free = generate(gpt, ids, 12)
    eos = int(free[0, 6 + 3])  # row 0 emits this at its 4th step
    first = [int((free[r, 6:] == eos).nonzero()[0]) if (free[r, 6:] == eos).any() else None for r in range(2)]
    out = generate(gpt, ids, 12, eos_token_id=eos)
    n0 = first[0] + 1
    assert torch.equal(out[0, : 6 + n0], free[0, : 6 + n0])
    assert (out[0, 6 + n0 :] == eos).all()  # filled with the pad (= eos) after it stopped
    if first[1] is None:
        assert torch.equal(out[1], free[1])
    # both rows stop -> the call returns before max_new_tokens
    both = generate(gpt, ids[:1].repeat(2, 1), 12, eos_token_id=eos)
    assert both.shape == (2, 6 + n0)


def test_stop_sequence_ends_a_row_after_the_sequence(models: tuple[GPT2LMHeadModel, GPT]) -> None:
    _, gpt = models
    ids = random_ids(1, 5, seed=8)
    free = generate(gpt, ids, 16)[0, 5:].tolist()
    stop = free[4:6]
    end = next(i + 2 for i in range(len(free) - 1) if free[i : i + 2] == stop)  # first time it is generated
    out = generate(gpt, ids, 16, stop_sequences=[[50000, 50001, 50002], stop], pad_token_id=0)
    assert out[0, 5:].tolist() == free[:end]
    # the prompt never triggers a stop
    prompt_tail = ids[0, -2:].tolist()
    assert generate(gpt, ids, 3, stop_sequences=[prompt_tail]).shape == (1, 8)


def test_sampling(models: tuple[GPT2LMHeadModel, GPT]) -> None:
    _, gpt = models
    ids = random_ids(2, 5)
    greedy = generate(gpt, ids, 10)
    assert torch.equal(generate(gpt, ids, 10, temperature=0.8, top_k=1), greedy)
    assert torch.equal(generate(gpt, ids, 10, temperature=0.8, top_p=1e-9), greedy)
    runs = [generate(gpt, ids, 10, temperature=1.5, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], greedy)


def test_generate_with_lora_restores_training_mode() -> None:
    torch.manual_seed(0)
    gpt = apply_lora(GPT(GPTConfig.from_preset("tiny", vocab_size=300)), 2, 4, dropout=0.2).train()
    ids = random_ids(1, 4, vocab=300)
    assert torch.equal(generate(gpt, ids, 6), generate(gpt, ids, 6, use_cache=False))
    assert gpt.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"max_new_tokens": 1020}, r"n_positions=1024, but got 5 \+ 1020 = 1025"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"top_k": 0}, "top_k=0"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"eos_token_id": 50257}, "eos_token_id=50257"),
        ({"stop_sequences": [[]]}, "stop_sequences"),
        ({"attention_mask": torch.tensor([[1, 1, 1, 0, 0]])}, "left padding"),
        ({"attention_mask": torch.ones(1, 4)}, "attention_mask.shape"),
    ],
)
def test_bad_generate_arguments(models: tuple[GPT2LMHeadModel, GPT], kwargs: dict, match: str) -> None:
    _, gpt = models
    with pytest.raises(ValueError, match=match):
        generate(gpt, random_ids(1, 5), **{"max_new_tokens": 4, **kwargs})
