"""Metrics by hand, perplexity of a known distribution, and the objective table behind `${direction:...}`."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

import tasks.resolvers  # noqa: F401  (registers ${direction:...}: these tests pass alone too)
from model import GPT, GPTConfig
from tasks.alpaca import Alpaca
from tasks.batching import TokenizedSplit, iterate_batches
from tasks.metrics import OBJECTIVES, accuracy, macro_f1, objective_direction, objective_key, perplexity


def test_accuracy_by_hand() -> None:
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert accuracy([2, 2, 2], [2, 2, 2]) == 1.0


def test_macro_f1_by_hand() -> None:
    # class 0: tp=2 fp=1 fn=0 -> f1 = 4/5; class 1: tp=1 fp=1 fn=2 -> 2/5; class 2: tp=0 fp=1 fn=1 -> 0
    preds = [0, 0, 0, 1, 2, 1]
    labels = [0, 0, 1, 1, 1, 2]
    assert macro_f1(preds, labels) == pytest.approx((4 / 5 + 2 / 5 + 0) / 3)
    # a majority-class model: accuracy 0.8, macro-F1 = (f1(ham)=8/9 + f1(spam)=0) / 2
    assert accuracy([0] * 5, [0, 0, 0, 0, 1]) == 0.8
    assert macro_f1([0] * 5, [0, 0, 0, 0, 1]) == pytest.approx(8 / 9 / 2)


def test_metrics_reject_mismatched_input() -> None:
    with pytest.raises(ValueError, match="equal-length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="non-empty"):
        macro_f1([], [])
    with pytest.raises(ValueError, match="n_tokens > 0"):
        perplexity(1.0, 0)


def test_perplexity_of_uniform_distribution_is_vocab_size() -> None:
    v, n = 50257, 37
    assert perplexity(n * math.log(v), n) == pytest.approx(v)
    assert perplexity(1e9, 1) == math.inf


def test_uniform_logits_through_the_model_give_perplexity_v() -> None:
    """A GPT whose final LayerNorm outputs zeros has uniform next-token logits: Alpaca.evaluate must say V."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny"))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
    rows = [[1, 2, 3, 4, 5, 50256], [7, 8, 9, 50256], [10, 11, 12, 13, 14, 15, 16, 17, 50256]]
    split = TokenizedSplit.from_rows(rows, prompt_lens=[2, 1, 5])
    metrics = Alpaca().evaluate(model, iterate_batches(split, 2))
    assert metrics["perplexity"] == pytest.approx(50257, rel=1e-4)
    assert metrics["loss"] == pytest.approx(math.log(50257), rel=1e-5)


def test_objective_table_and_directions() -> None:
    assert OBJECTIVES["accuracy"] == ("val_accuracy", "maximize")
    assert objective_key("perplexity") == "val_perplexity"
    assert objective_direction("perplexity") == "minimize"
    assert objective_direction("judge") == "maximize"
    assert objective_direction("trainable_params") == "minimize"
    assert objective_direction(["accuracy", "peak_memory_mb"]) == ["maximize", "minimize"]


def test_direction_resolver_in_a_config() -> None:
    cfg = OmegaConf.create({"objective": "accuracy", "direction": "${direction:${objective}}"})
    assert cfg.direction == "maximize"
    cfg.objective = "loss"
    assert cfg.direction == "minimize"
    multi = OmegaConf.create({"objective": ["macro_f1", "trainable_params"], "direction": "${direction:${objective}}"})
    assert list(multi.direction) == ["maximize", "minimize"]


def test_unknown_objective_lists_the_names() -> None:
    with pytest.raises(ValueError, match=r"objective must be one of .*'accuracy'.*but got objective='acuracy'"):
        objective_direction("acuracy")
    cfg = OmegaConf.create({"objective": "bleu", "direction": "${direction:${objective}}"})
    with pytest.raises(Exception, match="perplexity"):
        _ = cfg.direction
