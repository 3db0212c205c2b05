"""Alpaca: the exact prompt, the loss mask, the report's splits, hub and file loading, the token cache, bad data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tiktoken
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from tasks import DataError, get_task
from tasks.alpaca import format_example, format_prompt
from tasks.batching import iterate_batches
from tasks.tokenizer import get_tokenizer

REVISION = "dce01c9b08f87459cf36a430d809084718273017"


@pytest.fixture
def sample(shared_data: Path) -> Path:
    return shared_data / "alpaca" / "alpaca_sample.json"


@pytest.fixture
def cfg(sample: Path, tmp_path: Path) -> dict[str, Any]:
    return {"name": "alpaca", "path": str(sample), "train_size": 300, "val_size": 50, "test_size": 20}


def populate_hub_cache(hub: Path, repo_id: str, revision: str, files: dict[str, pd.DataFrame]) -> None:
    """Write parquet files into the Hugging Face cache layout, as `hf download` would leave them."""
    repo = hub / f"datasets--{repo_id.replace('/', '--')}"
    for relpath, df in files.items():
        path = repo / "snapshots" / revision / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path, index=False)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)


# ------------------------------------------------------------------------------------------------ the prompt

APPENDIX_INSTRUCTION = "Identify the correct spelling of the following word."
APPENDIX_INPUT = "Ocassion"
APPENDIX_OUTPUT = "The correct spelling is 'Occasion'."


def test_prompt_is_the_alpaca_template_byte_for_byte() -> None:
    # stanford_alpaca README, "with input" variant
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n"
        "\n"
        "### Instruction:\n"
        "Identify the correct spelling of the following word.\n"
        "\n"
        "### Input:\n"
        "Ocassion\n"
        "\n"
        "### Response:\n"
    )
    assert format_prompt(APPENDIX_INSTRUCTION, APPENDIX_INPUT) == expected
    assert format_prompt("Compose a tweet on global warming.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n"
        "\n"
        "### Instruction:\n"
        "Compose a tweet on global warming.\n"
        "\n"
        "### Response:\n"
    )


def test_raschka_style_renders_the_report_appendix() -> None:
    appendix = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n"
        "\n### Instruction:\nIdentify the correct spelling of the following word.\n"
        "\n### Input:\nOcassion\n"
        "\n### Response:\nThe correct spelling is 'Occasion'.<|endoftext|>"
    )
    assert format_example(APPENDIX_INSTRUCTION, APPENDIX_INPUT, APPENDIX_OUTPUT, style="raschka") == appendix


def test_loss_mask_covers_exactly_the_response_and_endoftext(tmp_path: Path) -> None:
    records = [{"instruction": APPENDIX_INSTRUCTION, "input": APPENDIX_INPUT, "output": APPENDIX_OUTPUT}] * 3 + [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    ] * 3
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(records))
    cfg = {"name": "alpaca", "path": str(path), "train_size": 2, "val_size": 2, "test_size": 2}
    data = get_task(cfg).load(cfg, 1024, cache_dir=tmp_path / "cache")
    enc = get_tokenizer()
    batch = next(iter(iterate_batches(data.test, 2)))
    for ids, labels, record in zip(batch["input_ids"], batch["labels"], data.test_records, strict=True):
        target = labels != -100
        first = int(target.nonzero()[0])
        assert enc.decode(ids[:first].tolist()) == format_prompt(record["instruction"], record["input"])
        assert enc.decode(ids[target].tolist()) == record["output"] + "<|endoftext|>"
        assert int(target.sum()) == len(enc.encode_ordinary(record["output"])) + 1


# ------------------------------------------------------------------------------------------------ the splits


def test_sample_loads_with_the_reports_rules(cfg: dict[str, Any], tmp_path: Path) -> None:
    task = get_task(cfg)
    assert (task.kind, task.num_classes, task.class_names) == ("lm", None, None)
    data = task.load(cfg, 1024, cache_dir=tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (300, 50, 20)
    # 4,127 outputs under 512 characters in the sample, 2 of them empty
    assert data.info["dropped"] == {"empty_instruction": 0, "empty_output": 2, "output_512_chars_or_more": 873}
    assert data.info["splits"]["test"]["with_input"] == data.info["splits"]["test"]["without_input"] == 10
    assert sum(r["input"].strip() != "" for r in data.test_records) == 10
    assert all(0 < len(r["output"]) < 512 for r in data.test_records)
    assert data.info["cache_hit"] is False


def test_same_seed_same_splits_other_seed_differs(cfg: dict[str, Any], tmp_path: Path) -> None:
    a = get_task(cfg).load(cfg, 1024, cache_dir=tmp_path / "a")
    b = get_task(cfg).load(cfg, 1024, cache_dir=tmp_path / "b")
    assert a.splits() == b.splits() and a.test_records == b.test_records
    other = {**cfg, "seed": 1}
    c = get_task(other).load(other, 1024, cache_dir=tmp_path / "c")
    assert c.train != a.train and c.test_records != a.test_records


def test_mask_prompt_false_trains_on_the_whole_text(cfg: dict[str, Any], tmp_path: Path) -> None:
    full = {**cfg, "mask_prompt": False}
    data = get_task(full).load(full, 1024, cache_dir=tmp_path)
    batch = next(iter(iterate_batches(data.val, 4)))
    real = batch["attention_mask"].bool()
    real[:, 0] = False  # nothing predicts the first token
    assert torch.equal(batch["labels"] != -100, real)


def test_long_rows_are_cut_and_prompt_only_rows_dropped(cfg: dict[str, Any], tmp_path: Path) -> None:
    data = get_task(cfg).load(cfg, n_positions=64, cache_dir=tmp_path)
    assert data.info["max_length"] == 64
    assert int(data.train.lengths.max()) <= 64
    info = data.info["splits"]["train"]
    assert info["truncated"] > 0 and info["dropped"]["prompt_fills_max_length"] > 0
    assert len(data.train) == 300 - info["dropped"]["prompt_fills_max_length"]
    assert (data.train.prompt_lens < data.train.lengths).all()


# --------------------------------------------------------------------------------------------------- the hub


def test_hub_cache_offline_matches_the_original_file(
    sample: Path, cfg: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = pd.DataFrame(json.loads(sample.read_text()))
    records["text"] = [
        format_prompt(i, x) + o for i, x, o in zip(records.instruction, records.input, records.output, strict=True)
    ]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    populate_hub_cache(
        tmp_path / "hf" / "hub",
        "tatsu-lab/alpaca",
        REVISION,
        {"data/train-00000-of-00001-a09b74b3ef9c3b56.parquet": records},
    )
    hub_cfg = {**cfg, "path": None}
    hub = get_task(hub_cfg).load(hub_cfg, 1024, cache_dir=tmp_path / "c1")
    local = get_task(cfg).load(cfg, 1024, cache_dir=tmp_path / "c2")
    assert hub.info["source"].startswith("hub tatsu-lab/alpaca@dce01c9b08f8")
    assert hub.splits() == local.splits()
    assert hub.test_records == local.test_records


def test_uncached_hub_dataset_offline_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    task = get_task({"name": "alpaca"})
    with pytest.raises(DataError, match=r"hf download tatsu-lab/alpaca --repo-type dataset .*set task.path") as e:
        task.load(None, 1024, cache_dir=tmp_path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- the cache


def test_second_load_does_no_tokenization(cfg: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_task(cfg).load(cfg, 1024, cache_dir=tmp_path)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tokenized on a cache hit")

    with monkeypatch.context() as m:
        m.setattr(tiktoken.Encoding, "encode_ordinary_batch", refuse)
        m.setattr(tiktoken.Encoding, "encode_ordinary", refuse)
        m.setattr(tiktoken.Encoding, "encode", refuse)
        second = get_task(cfg).load(cfg, 1024, cache_dir=tmp_path)
        # mask_prompt is applied at batch time, so toggling it reuses the same tokens
        unmasked = get_task({**cfg, "mask_prompt": False}).load({**cfg, "mask_prompt": False}, 1024, cache_dir=tmp_path)
    assert second.info["cache_hit"] is True
    assert second.splits() == first.splits() and second.test_records == first.test_records
    for a, b in zip(iterate_batches(first.train, 16), iterate_batches(second.train, 16), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert unmasked.info["cache_hit"] and not unmasked.train.mask_prompt


@pytest.mark.parametrize(
    "change", [{"max_length": 128}, {"prompt_style": "raschka"}, {"train_size": 299}, {"max_output_chars": 400}]
)
def test_changed_settings_miss_the_cache(cfg: dict[str, Any], tmp_path: Path, change: dict[str, Any]) -> None:
    get_task(cfg).load(cfg, 1024, cache_dir=tmp_path)
    changed = {**cfg, **change}
    assert get_task(changed).load(changed, 1024, cache_dir=tmp_path).info["cache_hit"] is False
    assert get_task(cfg).load(cfg, 1024, cache_dir=tmp_path).info["cache_hit"] is True


def test_changed_template_misses_the_cache(
    cfg: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.alpaca

    get_task(cfg).load(cfg, 1024, cache_dir=tmp_path)
    monkeypatch.setattr(tasks.alpaca, "PROMPT_NO_INPUT", tasks.alpaca.PROMPT_NO_INPUT.replace("###", "##"))
    data = get_task(cfg).load(cfg, 1024, cache_dir=tmp_path)
    assert data.info["cache_hit"] is False
    texts = [get_tokenizer().decode(data.test.row(i)) for i in range(len(data.test))]
    assert sum("\n\n## Response:" in t for t in texts) == 10  # the rows without an input


def test_changed_data_file_misses_the_cache(cfg: dict[str, Any], sample: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.json"
    copy.write_bytes(sample.read_bytes())
    mine = {**cfg, "path": str(copy)}
    get_task(mine).load(mine, 1024, cache_dir=tmp_path / "c")
    records = json.loads(copy.read_text())
    records[0]["output"] = "changed"
    copy.write_text(json.dumps(records))
    assert get_task(mine).load(mine, 1024, cache_dir=tmp_path / "c").info["cache_hit"] is False


# ------------------------------------------------------------------------------------------ loss and metrics


def test_loss_and_evaluate_match_an_unpadded_reference(cfg: dict[str, Any], tmp_path: Path) -> None:
    """Padded batches through Alpaca.compute_loss/evaluate equal per-row NLL over response tokens, unpadded."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    cfg = {**cfg, "test_size": 8}
    task = get_task(cfg)
    data = task.load(cfg, 1024, cache_dir=tmp_path)
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(len(data.test)):
            ids = torch.tensor([data.test.row(i)])
            p = int(data.test.prompt_lens[i])
            logp = F.log_softmax(model(ids)[0, :-1].double(), -1)  # predicts positions 1..T-1
            targets = ids[0, 1:]
            nll -= float(logp[torch.arange(len(targets)), targets][p - 1 :].sum())
            n += ids.shape[1] - p
    metrics = task.evaluate(model, iterate_batches(data.test, 8))
    assert metrics["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)

    batch = next(iter(iterate_batches(data.test, 4)))
    loss, count = task.compute_loss(model.train(), batch)
    assert count == int((batch["labels"] != -100).sum())
    loss.backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------- bad input


def test_sizes_larger_than_the_data_name_the_keys(sample: Path, tmp_path: Path) -> None:
    cfg = {"name": "alpaca", "path": str(sample)}  # the report's 12,000 / 1,500 / 100
    with pytest.raises(DataError, match=r"4125 records .*but got train_size=12000.*lower task.train_size"):
        get_task(cfg).load(cfg, 1024, cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[{"instruction": "a", "output": "b"}]', r"must have columns \['instruction', 'input', 'output'\]"),
        (b'[{"instruction": "a", "input": "", "output": 5}]', r"field 'output' must be a string .* record 1 of"),
        (b'[{"instruction": "a",\n "input": ""\n "output": "b"}]', r"is not valid JSON: .* line 3"),
        (b'[{"instruction": "a",\n "input": "\xff", "output": "b"}]', r"must be UTF-8, but got byte 0xff on line 2"),
        (b"[]", "at least one record"),
        (b'{"instruction": "a"}', "must hold a list of JSON objects"),
    ],
)
def test_bad_records_are_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    cfg = {"name": "alpaca", "path": str(path), "train_size": 1, "val_size": 1, "test_size": 1}
    with pytest.raises(DataError, match=message) as e:
        get_task(cfg).load(cfg, 1024, cache_dir=tmp_path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt_style": "vicuna"}, "prompt_style must be one of alpaca, raschka, but got prompt_style='vicuna'"),
        ({"val_size": 0.1}, "must be a row count for alpaca"),
        ({"test_size": 0}, r"`task.test_size >= 1` must hold"),
        ({"max_length": 1}, r"`task.max_length >= 2` must hold"),
        ({"path": "/nonexistent/alpaca.json"}, "task.path must be an existing file or folder"),
    ],
)
def test_bad_settings_fail_before_loading(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_task({"name": "alpaca", **change})
