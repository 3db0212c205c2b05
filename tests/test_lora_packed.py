"""PackedGPT (issue [15] item 1): one forward over a shared base equals each member applied alone to a copy of it.

Members differ in rank, alpha, dropout, targets, variant (LoRA, DoRA), rsLoRA and frozen blocks; their B matrices
(and DoRA magnitudes) are moved off their start so every adapter contributes. "Alone" is a deep copy of the member:
its own copy of the base, its adapters and head, run as an ordinary LoRA model.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, apply_lora, freeze_blocks
from model.lora import LoRASettings, PackedGPT, adapter_state_dict, lora_adapters

TOL = {"atol": 1e-5, "rtol": 1e-4}
CONFIG = {"n_layer": 3, "n_head": 2, "n_embd": 32, "vocab_size": 97, "n_positions": 24}
MEMBERS = {  # settings, frozen blocks
    "a": (LoRASettings(rank=2, alpha=4), 0),
    "b": (LoRASettings(rank=4, alpha=2, targets=("q", "v"), variant="dora"), 1),
    "c": (LoRASettings(rank=1, alpha=8, targets=("fc", "mlp_proj"), rslora=True), 2),
    "d": (LoRASettings(rank=3, alpha=3, dropout=0.1, targets=("k", "attn_proj"), variant="dora"), 0),
}


def _base(num_classes: int | None, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**CONFIG, num_classes=num_classes))


def _pack(num_classes: int | None) -> tuple[PackedGPT, dict[str, GPT]]:
    pack = PackedGPT(_base(num_classes))
    members = {}
    for i, (key, (settings, frozen)) in enumerate(MEMBERS.items()):
        score = torch.randn(num_classes, CONFIG["n_embd"]) * 0.02 if num_classes else None
        torch.manual_seed(100 + i)
        members[key] = pack.add_member(key, settings, frozen, score)
        with torch.no_grad():  # off their start: every adapter changes its rows
            for adapter in lora_adapters(members[key]).values():
                adapter.lora_b.weight.normal_(0, 0.3)
                if adapter.lora_magnitude is not None:
                    adapter.lora_magnitude.mul_(1 + 0.1 * torch.randn_like(adapter.lora_magnitude))
    return pack, members


def _batches(seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """One right-padded batch per member, of different sizes and lengths."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, key in enumerate(MEMBERS):
        rows, width = 2 + i % 2, 6 + 3 * i
        lengths = torch.randint(2, width + 1, (rows,), generator=g)
        lengths[0] = width
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        ids = torch.randint(0, CONFIG["vocab_size"], (rows, width), generator=g) * mask
        labels = torch.where(mask.bool(), ids, -100)
        labels[:, 0] = -100
        out[key] = {"input_ids": ids, "attention_mask": mask, "labels": labels, "classes": torch.arange(rows) % 3}
    return out


def _concat(batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The batches right-padded to the longest and stacked, as the packed trainer builds them."""
    width = max(b["input_ids"].shape[1] for b in batches.values())
    pad = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    return {
        name: torch.cat([F.pad(b[name], (0, width - b[name].shape[1]), value=value) for b in batches.values()])
        for name, value in pad.items()
    }


def _segments(batches: dict[str, dict[str, torch.Tensor]]) -> list[tuple[str, int]]:
    return [(key, b["input_ids"].shape[0]) for key, b in batches.items()]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_each_members_class_logits_and_gradients_equal_the_member_alone(train: bool) -> None:
    pack, members = _pack(num_classes=3)
    alone = {key: copy.deepcopy(m) for key, m in members.items()}
    if train:  # dropout draws differ between the two paths: train mode is compared without adapter dropout
        for key in [k for k, (s, _) in MEMBERS.items() if s.dropout > 0]:
            pack.remove_member(key), alone.pop(key), members.pop(key)
    pack.train(train)
    batches = {k: b for k, b in _batches().items() if k in members}
    packed = _concat(batches)
    logits = pack(packed["input_ids"], packed["attention_mask"], _segments(batches))
    start, total = 0, 0.0
    for key, batch in batches.items():
        rows = batch["input_ids"].shape[0]
        mine = logits[start : start + rows]
        start += rows
        own = alone[key].train(train)(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(mine, own, **TOL)
        total = total + F.cross_entropy(mine, batch["classes"]) * (1 + start)
        F.cross_entropy(own, batch["classes"]).mul(1 + start).backward()
    total.backward()
    for key, member in members.items():
        got, want = _grads(member), _grads(alone[key])
        assert got.keys() == want.keys() and "score.weight" in got
        for name in want:
            torch.testing.assert_close(got[name], want[name], **TOL, msg=f"{key}: {name}")


def test_each_members_lm_loss_and_gradients_equal_the_member_alone() -> None:
    pack, members = _pack(num_classes=None)
    alone = {key: copy.deepcopy(m) for key, m in members.items()}
    pack.eval()
    batches = _batches(seed=2)
    packed = _concat(batches)
    losses = pack.lm_losses(packed["input_ids"], packed["labels"], packed["attention_mask"], _segments(batches))
    for (key, batch), loss in zip(batches.items(), losses, strict=True):
        own = alone[key].eval().lm_loss(batch["input_ids"], batch["labels"], batch["attention_mask"], reduction="sum")
        torch.testing.assert_close(loss, own, **TOL)
        own.backward()
    torch.stack(losses).sum().backward()
    for key, member in members.items():
        got, want = _grads(member), _grads(alone[key])
        assert got and got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], **TOL, msg=f"{key}: {name}")


def test_the_base_is_shared_untouched_and_read_by_every_member() -> None:
    reference = _base(num_classes=3).state_dict()
    pack, members = _pack(num_classes=3)
    for name, tensor in pack.base.state_dict().items():
        if not name.startswith("score"):
            assert torch.equal(tensor, reference[name]), name
    shared = {id(p) for p in pack.base.parameters()}
    for member in members.values():
        base_tensors = [p for n, p in member.named_parameters() if not p.requires_grad]
        assert base_tensors and all(id(p) in shared for p in base_tensors)
    # a member's own tensors: adapters in its unfrozen blocks only, and its head
    frozen_c = MEMBERS["c"][1]
    assert all(int(name.split(".")[2]) >= frozen_c for name in adapter_state_dict(members["c"]))


@pytest.mark.parametrize("key", list(MEMBERS))
def test_a_member_starts_from_the_numbers_apply_lora_and_freeze_blocks_draw_alone(key: str) -> None:
    """Seeded alike, a member's adapters and head equal build_model's order: GPT, apply_lora, freeze_blocks."""
    settings, frozen = MEMBERS[key]
    alone = _base(num_classes=3, seed=7)
    after_base = torch.get_rng_state()
    apply_lora(alone, settings.rank, settings.alpha, settings.dropout, settings.targets, settings.rslora,
               variant=settings.variant)  # fmt: skip
    freeze_blocks(alone, frozen)
    pack = PackedGPT(_base(num_classes=3, seed=7))
    torch.set_rng_state(after_base)
    member = pack.add_member(key, settings, frozen, pack.score_init)
    want = {**adapter_state_dict(alone), "score.weight": alone.score.weight}
    got = {**adapter_state_dict(member), "score.weight": member.score.weight}
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=0, rtol=1e-6, msg=name)


def test_pissa_is_refused_in_one_line_and_leaves_the_pack_as_it_was() -> None:
    pack = PackedGPT(_base(num_classes=None))
    with pytest.raises(ValueError, match="init=pissa cannot join a pack") as info:
        pack.add_member("p", LoRASettings(rank=2, alpha=4, init="pissa"), 0, None)
    assert "\n" not in str(info.value) and len(pack.members) == 0


def test_segments_must_name_members_and_cover_the_batch() -> None:
    pack, _ = _pack(num_classes=3)
    ids = torch.zeros(4, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown key"):
        pack(ids, None, [("a", 2), ("zz", 2)])
    with pytest.raises(ValueError, match="cover the batch"):
        pack(ids, None, [("a", 2), ("b", 1)])
