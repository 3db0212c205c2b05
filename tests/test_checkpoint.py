"""Trainable-only checkpoints round-trip; the merged export loads in transformers with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_refs import TINY, hf_gpt2, random_ids, save_hf
from safetensors.torch import load_file, save_file
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from model import GPT, apply_lora, export_hf, freeze_blocks, from_pretrained, load_trainable, save_trainable
from model.lora import lora_modules


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf(hf_gpt2(**TINY, seed=13), tmp_path_factory.mktemp("tiny_ckpt"))


def _trained_lora(base_folder: Path, num_classes: int | None = 2, k: int = 1) -> GPT:
    gpt = from_pretrained(base_folder, num_classes=num_classes)
    freeze_blocks(gpt, k)
    apply_lora(gpt, rank=4, alpha=8, targets=("qkv", "fc"))
    torch.manual_seed(0)
    with torch.no_grad():  # stand-in for training: adapters and head away from their start
        for p in gpt.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return gpt.eval()


def test_lora_checkpoint_holds_only_adapters_and_head_and_round_trips(base_folder: Path, tmp_path: Path) -> None:
    gpt = _trained_lora(base_folder)
    config = {"task": "sms_spam", "lora": {"rank": 4}}
    folder = save_trainable(gpt, tmp_path / "best", config)
    names = set(load_file(folder / "trainable.safetensors"))
    expected = {f"transformer.h.1.{m}.lora_{ab}.weight" for m in ("attn.c_attn", "mlp.c_fc") for ab in "ab"}
    assert names == expected | {"score.weight"}
    meta = json.loads((folder / "trainable.json").read_text())
    assert meta["frozen_blocks"] == 1 and meta["lora"]["rank"] == 4 and meta["base"]["source"] == str(base_folder)

    fresh = from_pretrained(base_folder, num_classes=2).eval()
    assert load_trainable(fresh, folder) == config
    assert sorted(lora_modules(fresh)) == sorted(lora_modules(gpt))
    ids = random_ids(3, 8)
    with torch.no_grad():
        assert torch.equal(fresh(ids), gpt(ids))


def test_full_finetune_checkpoint_skips_frozen_tensors(base_folder: Path, tmp_path: Path) -> None:
    gpt = freeze_blocks(from_pretrained(base_folder), 1)
    with torch.no_grad():
        gpt.transformer.h[1].mlp.c_fc.weight.add_(1.0)
    folder = save_trainable(gpt, tmp_path / "full")
    names = set(load_file(folder / "trainable.safetensors"))
    assert all(n.startswith(("transformer.h.1.", "transformer.ln_f.")) for n in names)
    fresh = from_pretrained(base_folder)
    load_trainable(fresh, folder)
    assert fresh.frozen_blocks == 1
    assert torch.equal(fresh.transformer.h[1].mlp.c_fc.weight, gpt.transformer.h[1].mlp.c_fc.weight)


def test_mismatches_are_named(base_folder: Path, tmp_path: Path) -> None:
    folder = save_trainable(_trained_lora(base_folder), tmp_path / "ckpt")
    with pytest.raises(ValueError, match="num_classes=2, but got a model with num_classes=3"):
        load_trainable(from_pretrained(base_folder, num_classes=3), folder)
    other = apply_lora(freeze_blocks(from_pretrained(base_folder, num_classes=2), 1), 8, 8, targets=("qkv", "fc"))
    with pytest.raises(ValueError, match="LoRA rank=4, but got a model with LoRA rank=8"):
        load_trainable(other, folder)
    tensors = dict(load_file(folder / "trainable.safetensors"))
    tensors["score.weight"] = torch.zeros(2, 65)
    tensors["transformer.h.0.attn.c_attn.lora_a.weight"] = tensors.pop("transformer.h.1.attn.c_attn.lora_a.weight")
    save_file(tensors, folder / "trainable.safetensors")
    with pytest.raises(ValueError) as info:
        load_trainable(from_pretrained(base_folder, num_classes=2), folder)
    message = str(info.value)
    assert "missing ['transformer.h.1.attn.c_attn.lora_a.weight']" in message
    assert "unexpected ['transformer.h.0.attn.c_attn.lora_a.weight']" in message
    assert "score.weight: got (2, 65), expected (2, 64)" in message
    with pytest.raises(FileNotFoundError, match=r"trainable\.safetensors"):
        load_trainable(from_pretrained(base_folder), tmp_path / "nowhere")


def test_merged_export_loads_in_transformers(base_folder: Path, tmp_path: Path) -> None:
    gpt = _trained_lora(base_folder, num_classes=None, k=0)
    ids = random_ids(2, 10)
    with torch.no_grad():
        expected = gpt(ids)
    folder = export_hf(gpt, tmp_path / "export")
    assert lora_modules(gpt) and not any(m.merged for m in lora_modules(gpt).values())  # the model is untouched
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(from_pretrained(folder).eval()(ids), expected, atol=1e-5, rtol=0)


def test_classifier_export_loads_as_sequence_classification(base_folder: Path, tmp_path: Path) -> None:
    gpt = _trained_lora(base_folder, num_classes=2)
    folder = export_hf(gpt, tmp_path / "clf", class_names=["ham", "spam"])
    hf = GPT2ForSequenceClassification.from_pretrained(folder).eval()
    assert hf.config.id2label == {0: "ham", 1: "spam"}
    ids = random_ids(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, gpt(ids), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="num_classes=2 entries, but got 3"):
        export_hf(gpt, tmp_path / "bad", class_names=["a", "b", "c"])


VARIANTS = {
    "dora": {"variant": "dora"},
    "pissa": {"init": "pissa"},
    "q-v": {"targets": ["q", "v"]},
    "q-v-fc-dora-pissa": {"targets": ["q", "v", "fc"], "variant": "dora", "init": "pissa"},
}


def _trained_variant(base_folder: Path, kwargs: dict) -> GPT:
    gpt = apply_lora(freeze_blocks(from_pretrained(base_folder, num_classes=2), 1), rank=4, alpha=8, **kwargs)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in gpt.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return gpt.eval()


@pytest.mark.parametrize("kwargs", VARIANTS.values(), ids=VARIANTS.keys())
def test_variant_checkpoint_round_trips_onto_the_original_base(
    base_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict
) -> None:
    gpt = _trained_variant(base_folder, kwargs)
    folder = save_trainable(gpt, tmp_path / "ckpt")
    names = set(load_file(folder / "trainable.safetensors"))
    pissa = {n for n in names if n.endswith((".pissa_a0", ".pissa_b0"))}
    assert bool(pissa) == (kwargs.get("init") == "pissa")  # PiSSA's start travels with the adapter
    meta = json.loads((folder / "trainable.json").read_text())
    assert {k: meta["lora"][k] for k in kwargs} == kwargs
    # the residual base is rebuilt from the saved start: no SVD on load
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: pytest.fail("load_trainable ran an SVD"))
    fresh = from_pretrained(base_folder, num_classes=2).eval()
    load_trainable(fresh, folder)
    ids = random_ids(3, 8)
    with torch.no_grad():
        assert torch.equal(fresh(ids), gpt(ids))
    for name, p in gpt.named_parameters():  # residual base weights included
        assert torch.equal(p, fresh.get_parameter(name)), name


def test_pissa_checkpoint_refuses_a_model_with_another_start(base_folder: Path, tmp_path: Path) -> None:
    folder = save_trainable(_trained_variant(base_folder, VARIANTS["pissa"]), tmp_path / "ckpt")
    same = apply_lora(freeze_blocks(from_pretrained(base_folder, num_classes=2), 1), 4, 8, init="pissa")
    load_trainable(same, folder)  # its own SVD gives the same start
    other = apply_lora(freeze_blocks(from_pretrained(base_folder, num_classes=2), 1), 4, 8, init="pissa")
    with torch.no_grad():
        other.transformer.h[1].mlp.c_fc.pissa_a0.mul_(-1)
    with pytest.raises(ValueError, match=r"another PiSSA start \(transformer.h.1.mlp.c_fc.pissa_a0 differs\)"):
        load_trainable(other, folder)


def test_checkpoint_from_before_variants_loads_as_plain_lora(base_folder: Path, tmp_path: Path) -> None:
    gpt = _trained_lora(base_folder)
    folder = save_trainable(gpt, tmp_path / "old")
    meta = json.loads((folder / "trainable.json").read_text())
    del meta["lora"]["variant"], meta["lora"]["init"]
    (folder / "trainable.json").write_text(json.dumps(meta))
    fresh = from_pretrained(base_folder, num_classes=2).eval()
    load_trainable(fresh, folder)
    assert fresh.lora_config["variant"] == "lora" and fresh.lora_config["init"] == "default"
    ids = random_ids(2, 8)
    with torch.no_grad():
        assert torch.equal(fresh(ids), gpt(ids))
