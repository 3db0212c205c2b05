"""GPT-2 from scratch against transformers' GPT2LMHeadModel: logits, padding, loss, classification, checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_refs import SMALL2, TINY, hf_gpt2, random_ids, save_hf
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from model import GPT, PRESETS, GPTConfig, count_parameters, from_pretrained
from model.hub import clear_cache

ATOL = 1e-4


@pytest.fixture(scope="module", params=["tiny", "small2"])
def reference(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT2LMHeadModel, Path]:
    shape = TINY if request.param == "tiny" else SMALL2
    hf = hf_gpt2(**shape)
    folder = save_hf(hf, tmp_path_factory.mktemp(request.param))
    return hf, folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf(hf_gpt2(**TINY, seed=3), tmp_path_factory.mktemp("tiny3"))


def test_logits_match_transformers(reference: tuple[GPT2LMHeadModel, Path]) -> None:
    hf, folder = reference
    gpt = from_pretrained(folder).eval()
    ids = random_ids(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids), hf(ids).logits, atol=ATOL, rtol=0)


def test_right_padded_batch_matches_transformers(reference: tuple[GPT2LMHeadModel, Path]) -> None:
    hf, folder = reference
    gpt = from_pretrained(folder).eval()
    ids = random_ids(3, 12, seed=2)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        ours, theirs = gpt(ids, mask), hf(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=ATOL, rtol=0)


def test_left_padding_gives_the_unpadded_rows(tiny_folder: Path) -> None:
    gpt = from_pretrained(tiny_folder).eval()
    ids = random_ids(2, 10)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        batched = gpt(ids, mask)
        alone = gpt(ids[1:, 4:])
    torch.testing.assert_close(batched[1, 4:], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[0], gpt(ids[:1])[0], atol=1e-5, rtol=0)


def test_lm_loss_matches_transformers_and_skips_padding(tiny_folder: Path) -> None:
    hf = GPT2LMHeadModel.from_pretrained(tiny_folder).eval()
    gpt = from_pretrained(tiny_folder).eval()
    ids = random_ids(3, 14)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # a masked prompt
    labels[mask == 0] = -100
    with torch.no_grad():
        ours = gpt.lm_loss(ids, labels, mask)
        theirs = hf(ids, attention_mask=mask, labels=labels).loss
        # padding positions never count, even when their labels are not -100
        unmasked = gpt.lm_loss(ids, torch.where(mask.bool(), labels, ids), mask)
        n = int((labels[:, 1:] != -100).sum())
        total = gpt.lm_loss(ids, labels, mask, reduction="sum")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(unmasked, ours, atol=0, rtol=0)
    torch.testing.assert_close(total, ours * n, atol=1e-4, rtol=1e-6)


def test_classification_logits_match_transformers(tiny_folder: Path) -> None:
    gpt = from_pretrained(tiny_folder, num_classes=3).eval()
    hf = GPT2ForSequenceClassification.from_pretrained(tiny_folder, num_labels=3, pad_token_id=50256).eval()
    with torch.no_grad():
        hf.score.weight.copy_(gpt.score.weight)
    ids = random_ids(3, 9)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        ours = gpt(ids, mask)
        theirs = hf(ids.masked_fill(mask == 0, 50256), attention_mask=mask).logits
    assert ours.shape == (3, 3)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert gpt.score.bias is None
    assert 0.01 < float(gpt.score.weight.detach().std()) < 0.03  # N(0, 0.02), as transformers initialises `score`


def test_parameter_counts_equal_transformers_for_every_preset() -> None:
    for name in ("small", "medium", "xl"):
        cfg = PRESETS[name]
        with torch.device("meta"):
            ours = GPT(GPTConfig.from_preset(name))
            hf = GPT2LMHeadModel(GPT2Config(**cfg))
        assert count_parameters(ours) == (sum(p.numel() for p in hf.parameters()),) * 2
    assert count_parameters(ours)[1] == 1_557_611_200  # GPT-2 xl
    tiny = GPT(GPTConfig.from_preset("tiny"))
    assert (tiny.config.n_layer, tiny.config.n_head, tiny.config.n_embd) == (2, 2, 64)
    assert tiny.config.n_positions == 1024 and tiny.config.vocab_size == 50257
    assert tiny.lm_head.weight is tiny.transformer.wte.weight


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_preset("tiny", num_classes=2, vocab_size=512)).train()
    ids = random_ids(2, 16, vocab=512)

    def grads() -> dict[str, torch.Tensor]:
        gpt.zero_grad(set_to_none=True)
        gpt(ids).logsumexp(-1).sum().backward()
        gpt.lm_loss(ids, ids).backward()
        return {n: p.grad.clone() for n, p in gpt.named_parameters()}

    plain = grads()
    gpt.set_gradient_checkpointing(True)
    checkpointed = grads()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, atol=1e-5, rtol=1e-5, msg=name)


def test_dropout_is_active_only_in_training() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_preset("tiny", dropout=0.1))
    ids = random_ids(1, 8)
    assert not torch.equal(gpt.train()(ids), gpt(ids))
    gpt.eval()
    assert torch.equal(gpt(ids), gpt(ids))


def test_repeat_load_is_a_private_copy(tiny_folder: Path) -> None:
    first = from_pretrained(tiny_folder)
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)  # a trial changing its weights in place
    second = from_pretrained(tiny_folder)
    reference = load_file(tiny_folder / "model.safetensors")
    torch.testing.assert_close(second.transformer.wte.weight, reference["transformer.wte.weight"], atol=0, rtol=0)
    torch.testing.assert_close(
        second.transformer.h[1].mlp.c_fc.weight, reference["transformer.h.1.mlp.c_fc.weight"].t(), atol=0, rtol=0
    )


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_embd": 65, "n_head": 2}, "n_embd % n_head == 0"),
        ({"n_layer": 0}, "n_layer=0"),
        ({"dropout": 1.0}, r"\[0, 1\), but got dropout=1.0"),
        ({"num_classes": 1}, "num_classes=1"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="tiny, small, medium, large, xl, but got preset='huge'"):
        GPTConfig.from_preset("huge")
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig.from_preset("tiny", n_layers=3)


def test_bad_forward_inputs() -> None:
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=16))
    with pytest.raises(ValueError, match="n_positions=16, but got length=17"):
        gpt(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D"):
        gpt(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask\.shape"):
        gpt(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4))
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels\.shape"):
        gpt.lm_loss(ids, ids[:, :4])
    with pytest.raises(ValueError, match="reduction='none'"):
        gpt.lm_loss(ids, ids, reduction="none")
    with pytest.raises(ValueError, match="at least one position"):
        gpt.lm_loss(ids, torch.full_like(ids, -100))


def test_bad_head_or_dropout_fails_before_weights_are_looked_up() -> None:
    with pytest.raises(ValueError, match="num_classes=1"):
        from_pretrained("openai-community/not-cached", num_classes=1)
    with pytest.raises(ValueError, match=r"dropout=1\.5"):
        from_pretrained("openai-community/not-cached", dropout=1.5)


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"gpt2, gpt2-medium, gpt2-large, gpt2-xl, a hub repo id .* name_or_path='gpt-3'"
    ):
        from_pretrained("gpt-3")
    with pytest.raises(ValueError, match="no such folder"):
        from_pretrained("./checkpoints/missing")


def test_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"config.json \+ model.safetensors .* files=\['config.json'\]"):
        from_pretrained(tmp_path)


def _tampered(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = dict(load_file(src / "model.safetensors"))
    edit(state)
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_unexpected_and_misshaped_keys_are_named(tiny_folder: Path, tmp_path: Path) -> None:
    clear_cache()

    def edit(state: dict) -> None:
        del state["transformer.h.1.ln_2.weight"]
        state["transformer.h.1.extra.weight"] = torch.zeros(3)
        state["transformer.wpe.weight"] = torch.zeros(512, 64)

    folder = _tampered(tiny_folder, tmp_path / "bad", edit)
    with pytest.raises(ValueError) as info:
        from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys [transformer.h.1.ln_2.weight]" in message
    assert "unexpected keys [transformer.h.1.extra.weight]" in message
    assert "transformer.wpe.weight: got (512, 64), expected (1024, 64)" in message


def test_config_variants_we_cannot_compute_are_refused(tiny_folder: Path, tmp_path: Path) -> None:
    folder = _tampered(tiny_folder, tmp_path / "relu", lambda state: None)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ValueError, match="activation_function='relu'"):
        from_pretrained(folder)
