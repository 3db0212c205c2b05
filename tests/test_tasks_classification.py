"""SST-2, AG News, SMS Spam and text_classification: real samples, the hub cache, splits, truncation, bad data."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from tasks import DataError, TaskData, get_task
from tasks.batching import iterate_batches
from tasks.metrics import accuracy, macro_f1
from tasks.tokenizer import get_tokenizer

REVISIONS = {
    "stanfordnlp/sst2": "8d51e7e4887a4caaa95b3fbebbf53c0490b58bbb",
    "fancyzhx/ag_news": "eb185aade064a813bc0b7f42de02595523103ca4",
    "ucirvine/sms_spam": "cae486f927c250fe1d4a5b55f11357964ed1646c",
}


def populate_hub_cache(hub: Path, repo_id: str, files: dict[str, pd.DataFrame]) -> None:
    """Write parquet files into the Hugging Face cache layout, as `hf download` would leave them."""
    repo = hub / f"datasets--{repo_id.replace('/', '--')}"
    for relpath, df in files.items():
        path = repo / "snapshots" / REVISIONS[repo_id] / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path, index=False)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISIONS[repo_id])


def load(cfg: dict[str, Any], cache_dir: Path | None, n_positions: int = 1024) -> TaskData:
    return get_task(cfg).load(cfg, n_positions, cache_dir=cache_dir)


def counts(data: TaskData, split: str) -> dict[str, int]:
    return data.info["splits"][split]["class_counts"]


def total_counts(data: TaskData) -> dict[str, int]:
    return {n: sum(counts(data, s)[n] for s in ("train", "val", "test")) for n in data.class_names}


@pytest.fixture(scope="session")
def sst2_sample(shared_data: Path) -> TaskData:
    """The whole GLUE sample (67k rows, a few seconds to tokenize): loaded once, through the session's cache."""
    cfg = {"name": "sst2", "path": str(shared_data / "sst2")}
    load(cfg, None)
    return load(cfg, None)


# ------------------------------------------------------------------------------------------ real samples


def test_sst2_sample_folder(sst2_sample: TaskData) -> None:
    data = sst2_sample
    assert data.class_names == ("negative", "positive")
    assert data.info["cache_hit"] is True
    assert (len(data.train), len(data.val), len(data.test)) == (66349, 1000, 872)
    assert counts(data, "test") == {"negative": 428, "positive": 444}  # dev.tsv is the test split
    assert data.info["dropped"] == {"empty_text": 0}
    train_val = {n: counts(data, "train")[n] + counts(data, "val")[n] for n in data.class_names}
    assert train_val == {"negative": 29780, "positive": 37569}
    assert abs(counts(data, "val")["positive"] - 1000 * 37569 / 67349) < 1  # stratified
    # the trailing space GLUE leaves on every sentence is stripped, so no row ends in token 220 (" ")
    assert not any(data.val.row(i)[-1] == 220 for i in range(len(data.val)))


def test_ag_news_sample_file_carves_all_splits(shared_data: Path, tmp_path: Path) -> None:
    task = get_task({"name": "ag_news"})
    assert task.num_classes == 4 and task.class_names == ("World", "Sports", "Business", "Sci/Tech")
    data = load({"name": "ag_news", "path": str(shared_data / "ag_news" / "test.csv")}, tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (4840, 2000, 760)
    assert counts(data, "test") == dict.fromkeys(data.class_names, 190)
    assert counts(data, "val") == dict.fromkeys(data.class_names, 500)
    assert total_counts(data) == dict.fromkeys(data.class_names, 1900)
    # the first row of test.csv is class 3 (Business): "Fears for T N pension after talks" + description
    enc = get_tokenizer()
    texts = {enc.decode(data.train.row(i)): int(data.train.labels[i]) for i in range(len(data.train))}
    texts |= {enc.decode(data.val.row(i)): int(data.val.labels[i]) for i in range(len(data.val))}
    texts |= {enc.decode(data.test.row(i)): int(data.test.labels[i]) for i in range(len(data.test))}
    first = next(t for t in texts if t.startswith("Fears for T N pension after talks Unions representing"))
    assert texts[first] == 2


def test_sms_spam_sample_stratified_70_10_20(shared_data: Path, tmp_path: Path) -> None:
    data = load({"name": "sms_spam", "path": str(shared_data / "sms_spam" / "SMSSpamCollection")}, tmp_path)
    assert data.class_names == ("ham", "spam")
    assert (len(data.train), len(data.val), len(data.test)) == (3902, 557, 1115)
    assert total_counts(data) == {"ham": 4827, "spam": 747}
    for split, n in (("val", 557), ("test", 1115)):
        assert abs(counts(data, split)["spam"] - n * 747 / 5574) < 1


def test_sms_spam_balanced_undersampling(shared_data: Path, tmp_path: Path) -> None:
    cfg = {"name": "sms_spam", "path": str(shared_data / "sms_spam"), "balance": True}  # the folder works too
    data = load(cfg, tmp_path)
    assert total_counts(data) == {"ham": 747, "spam": 747}
    assert (len(data.train), len(data.val), len(data.test)) == (1046, 149, 299)
    for split in ("train", "val", "test"):
        assert abs(counts(data, split)["ham"] - counts(data, split)["spam"]) <= 1


def test_same_seed_same_splits_other_seed_differs(shared_data: Path, tmp_path: Path) -> None:
    cfg = {"name": "sms_spam", "path": str(shared_data / "sms_spam" / "SMSSpamCollection")}
    a, b = load(cfg, tmp_path / "a"), load(cfg, tmp_path / "b")
    assert a.splits() == b.splits()
    c = load({**cfg, "seed": 7}, tmp_path / "c")
    assert c.test != a.test and c.train != a.train
    assert counts(c, "test") == counts(a, "test")  # stratification fixes the per-class counts


# ------------------------------------------------------------------------------- the hub, offline, vs files


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def test_sms_spam_hub_cache_equals_the_original_file(shared_data: Path, hub: Path, tmp_path: Path) -> None:
    path = shared_data / "sms_spam" / "SMSSpamCollection"
    rows = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").split("\n") if line]
    # the hub's loader keeps each line's newline in `sms` and maps ham/spam to 0/1
    df = pd.DataFrame({"sms": [t + "\n" for _, t in rows], "label": [int(lab == "spam") for lab, _ in rows]})
    populate_hub_cache(hub, "ucirvine/sms_spam", {"plain_text/train-00000-of-00001.parquet": df})
    from_hub = load({"name": "sms_spam"}, tmp_path / "c1")
    from_file = load({"name": "sms_spam", "path": str(path)}, tmp_path / "c2")
    assert from_hub.info["source"] == "hub ucirvine/sms_spam@cae486f927c2"
    assert from_hub.splits() == from_file.splits()


def test_sst2_hub_cache_equals_the_glue_folder(shared_data: Path, hub: Path, tmp_path: Path) -> None:
    folder = tmp_path / "SST-2"
    folder.mkdir()
    lines = (shared_data / "sst2" / "train.tsv").read_bytes().split(b"\n")[:3001]  # header + 3,000 rows
    (folder / "train.tsv").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "dev.tsv").write_bytes((shared_data / "sst2" / "dev.tsv").read_bytes())

    def glue(name: str) -> pd.DataFrame:
        df = pd.read_csv(folder / name, sep="\t", quoting=csv.QUOTE_NONE, dtype={"sentence": str, "label": int})
        return pd.DataFrame({"idx": np.arange(len(df), dtype=np.int32), "sentence": df.sentence, "label": df.label})

    test = pd.DataFrame({"idx": np.arange(3, dtype=np.int32), "sentence": ["a", "b", "c"], "label": [-1, -1, -1]})
    populate_hub_cache(
        hub,
        "stanfordnlp/sst2",
        {
            "data/train-00000-of-00001.parquet": glue("train.tsv"),
            "data/validation-00000-of-00001.parquet": glue("dev.tsv"),
            "data/test-00000-of-00001.parquet": test,
        },
    )
    from_hub = load({"name": "sst2", "val_size": 300}, tmp_path / "c1")
    from_folder = load({"name": "sst2", "val_size": 300, "path": str(folder)}, tmp_path / "c2")
    assert (len(from_hub.train), len(from_hub.val), len(from_hub.test)) == (2700, 300, 872)
    assert from_hub.splits() == from_folder.splits()


def test_ag_news_hub_cache_equals_the_original_folder(shared_data: Path, hub: Path, tmp_path: Path) -> None:
    lines = (shared_data / "ag_news" / "test.csv").read_bytes().split(b"\n")
    folder = tmp_path / "ag_news_csv"
    folder.mkdir()
    (folder / "train.csv").write_bytes(b"\n".join(lines[:6000]) + b"\n")
    (folder / "test.csv").write_bytes(b"\n".join(lines[6000:]))

    def hub_frame(name: str) -> pd.DataFrame:
        with (folder / name).open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return pd.DataFrame({"text": [f"{t} {d}" for _, t, d in rows], "label": [int(c) - 1 for c, _, _ in rows]})

    populate_hub_cache(
        hub,
        "fancyzhx/ag_news",
        {
            "data/train-00000-of-00001.parquet": hub_frame("train.csv"),
            "data/test-00000-of-00001.parquet": hub_frame("test.csv"),
        },
    )
    from_hub = load({"name": "ag_news", "val_size": 400}, tmp_path / "c1")
    from_folder = load({"name": "ag_news", "val_size": 400, "path": str(folder)}, tmp_path / "c2")
    assert (len(from_hub.train), len(from_hub.val), len(from_hub.test)) == (5600, 400, 1600)
    assert from_hub.splits() == from_folder.splits()
    assert sum(counts(from_hub, "test").values()) == 1600


def test_uncached_hub_dataset_offline_says_how_to_get_it(hub: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"hf download ucirvine/sms_spam --repo-type dataset.* or set task.path") as e:
        load({"name": "sms_spam"}, tmp_path)
    assert "\n" not in str(e.value)


def test_hub_repo_without_the_split_is_an_error(hub: Path, tmp_path: Path) -> None:
    populate_hub_cache(
        hub, "stanfordnlp/sst2", {"data/train-00000-of-00001.parquet": pd.DataFrame({"sentence": ["a"], "label": [0]})}
    )
    with pytest.raises(
        DataError, match=r"must have parquet files for splits \['train', 'validation'\].*\['validation'\]"
    ):
        load({"name": "sst2"}, tmp_path)


# ------------------------------------------------------------------------------------------ truncation


def test_truncation_keeps_the_start_or_the_end(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "sms_spam" / "SMSSpamCollection"
    right = load({"name": "sms_spam", "path": str(path), "max_length": 16}, tmp_path / "r")
    left = load({"name": "sms_spam", "path": str(path), "max_length": 16, "truncation_side": "left"}, tmp_path / "l")
    full = load({"name": "sms_spam", "path": str(path)}, tmp_path / "f")
    assert int(right.train.lengths.max()) == 16
    cut = np.flatnonzero(full.train.lengths > 16)
    assert right.info["splits"]["train"]["truncated"] == len(cut) > 0
    for i in cut[:20]:
        assert right.train.row(i) == full.train.row(i)[:16]
        assert left.train.row(i) == full.train.row(i)[-16:]
    # the model's context caps max_length too
    assert load({"name": "sms_spam", "path": str(path)}, tmp_path / "n", n_positions=8).info["max_length"] == 8


# ------------------------------------------------------------------------------------ text_classification


def test_text_classification_csv_with_inferred_labels(tmp_path: Path) -> None:
    rows = [{"review": f'great "film" number {i}, really', "stars": ["bad", "good", "meh"][i % 3]} for i in range(60)]
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)
    cfg = {
        "name": "text_classification",
        "path": str(tmp_path / "reviews.csv"),
        "text_column": "review",
        "label_column": "stars",
    }
    task = get_task(cfg)
    assert task.num_classes is None  # known once loaded
    data = task.load(cfg, 1024, cache_dir=tmp_path / "c")
    assert task.class_names == data.class_names == ("bad", "good", "meh") and task.num_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (48, 6, 6)
    assert counts(data, "test") == {"bad": 2, "good": 2, "meh": 2}
    assert get_tokenizer().decode(data.test.row(0)).startswith('great "film" number')
    again = get_task(cfg)
    again.load(cfg, 1024, cache_dir=tmp_path / "c")
    assert again.class_names == ("bad", "good", "meh")


def test_text_classification_split_files_and_label_names(tmp_path: Path) -> None:
    def write(name: str, n: int) -> Path:
        path = tmp_path / name
        recs = [{"text": f"row {i}", "label": ["neg", 1][i % 2]} for i in range(n)]  # names or indices
        path.write_text("\n".join(json.dumps(r) for r in recs))
        return path

    cfg = {
        "name": "text_classification",
        "train_path": str(write("train.jsonl", 40)),
        "test_path": str(write("test.jsonl", 10)),
        "label_names": ["neg", "pos"],
        "val_size": 8,
    }
    assert get_task(cfg).num_classes == 2
    data = load(cfg, tmp_path / "c")
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 10)
    assert counts(data, "test") == {"neg": 5, "pos": 5}
    assert data.info["splits"]["val"]["from"] == "train"


def test_text_classification_parquet_folder_and_tsv(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for name, n in (("train", 30), ("validation", 6), ("test", 4)):
        pd.DataFrame({"text": [f"{name} {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}).to_parquet(
            folder / f"{name}.parquet"
        )
    data = load({"name": "text_classification", "path": str(folder)}, tmp_path / "c")
    assert data.class_names == ("0", "1")
    assert (len(data.train), len(data.val), len(data.test)) == (30, 6, 4)
    tsv = tmp_path / "t.tsv"
    tsv.write_text("text\tlabel\n" + '"quoted start\tx\nplain\ty\n' * 10)  # QUOTE_NONE: quotes are text
    data = load({"name": "text_classification", "path": str(tsv), "val_size": 2, "test_size": 2}, tmp_path / "c")
    assert sum(len(s) for s in data.splits().values()) == 20 and data.class_names == ("x", "y")
    texts = {get_tokenizer().decode(s.row(i)) for s in data.splits().values() for i in range(len(s))}
    assert texts == {'"quoted start', "plain"}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"path": "x.csv", "train_path": "y.csv"}, "exactly one of task.path .* and task.train_path"),
        ({}, "exactly one of task.path"),
        ({"train_path": "/nonexistent.csv"}, "task.train_path must be an existing file"),
        ({"path": ".", "format": "xlsx"}, "task.format must be one of csv, tsv, jsonl, json, parquet or null"),
        ({"path": ".", "label_names": ["only"]}, "label_names must be a list of at least 2 distinct names"),
    ],
)
def test_text_classification_bad_settings(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_task({"name": "text_classification", **cfg})


def test_text_classification_bad_data(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("body,label\nhello,a\n")
    with pytest.raises(
        DataError,
        match=r"d.csv \(task.text_column, task.label_column\) must have columns \['text', 'label'\], "
        r"but got columns \['body', 'label'\]",
    ):
        load({"name": "text_classification", "path": str(path)}, tmp_path)
    path.write_text("text,label\n" + "hello,a\n" * 5 + "hi,zzz\n")
    cfg = {"name": "text_classification", "path": str(path), "label_names": ["a", "b"]}
    with pytest.raises(
        DataError,
        match=r"labels must be one of \['a', 'b'\], but got \['zzz'\] in 1 rows of .*d.csv \(e.g. d.csv row 6\)",
    ):
        load(cfg, tmp_path)
    path.write_text("text,label\n" + "hello,a\n" * 5)
    with pytest.raises(DataError, match="at least 2 distinct values"):
        load({"name": "text_classification", "path": str(path)}, tmp_path)


# --------------------------------------------------------------------------------------------- bad input


def sms_file(tmp_path: Path, content: bytes) -> dict[str, Any]:
    path = tmp_path / "SMSSpamCollection"
    path.write_bytes(content)
    return {"name": "sms_spam", "path": str(path), "val_size": 1, "test_size": 1}


GOOD_SMS = b"ham\thello there\nspam\tWIN a prize\nham\tsee you\nspam\tfree entry\n"


def test_labels_outside_the_class_set_are_listed(tmp_path: Path) -> None:
    cfg = sms_file(tmp_path, GOOD_SMS + b"hamm\tmistyped\nSPAM\tshouting\n")
    with pytest.raises(
        DataError, match=r"labels must be one of \['ham', 'spam'\], but got \['SPAM', 'hamm'\] in 2 rows .*row 5"
    ):
        load(cfg, tmp_path)


def test_sst2_label_outside_the_class_set(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood \t1\nbad \t0\nweird \t2\n")
    with pytest.raises(DataError, match=r"labels must be one of \['0', '1'\], but got \['2'\] .*train.tsv row 3"):
        load({"name": "sst2", "path": str(tmp_path)}, tmp_path)


def test_missing_columns_name_the_file_and_the_columns_found(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("text\tlabel\ngood \t1\n")
    with pytest.raises(
        DataError, match=r"train.tsv must have columns \['sentence', 'label'\], but got columns \['text', 'label'\]"
    ):
        load({"name": "sst2", "path": str(tmp_path)}, tmp_path)
    (tmp_path / "test.csv").write_text('"1","only a title"\n')
    with pytest.raises(DataError, match=r"test.csv must have 3 columns \(class, title, description\), but got 2"):
        load({"name": "ag_news", "path": str(tmp_path / "test.csv")}, tmp_path)


def test_empty_texts_are_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = sms_file(tmp_path, GOOD_SMS + b"ham\t   \nspam\t\n")
    with caplog.at_level(logging.WARNING, logger="tasks"):
        data = load(cfg, tmp_path)
    assert data.info["dropped"] == {"empty_text": 2}
    assert sum(len(s) for s in data.splits().values()) == 4
    assert "dropped 2 rows with an empty text" in caplog.text
    with pytest.raises(DataError, match="must keep at least one row, but got 0 after dropping empty texts"):
        load(sms_file(tmp_path, b"ham\t \nspam\t\n"), tmp_path)


def test_undecodable_bytes_name_the_file_and_line(tmp_path: Path) -> None:
    cfg = sms_file(tmp_path, GOOD_SMS[:30] + b"\nham\tcaf\xe9 latin-1\n")
    with pytest.raises(DataError, match=r"SMSSpamCollection must be UTF-8, but got byte 0xe9 on line 3"):
        load(cfg, tmp_path)


def test_extra_field_is_a_parse_error_with_the_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"SMSSpamCollection could not be parsed as TSV: .*line 3"):
        load(sms_file(tmp_path, b"ham\ta\nspam\tb\nham\tc\textra\n"), tmp_path)


def test_sizes_larger_than_the_data_name_the_keys(shared_data: Path, tmp_path: Path) -> None:
    path = str(shared_data / "sms_spam" / "SMSSpamCollection")
    with pytest.raises(
        DataError, match=r"5574 usable rows .*test_size=6000.*lower task.train_size or task.test_size or task.val_size"
    ):
        load({"name": "sms_spam", "path": path, "test_size": 6000}, tmp_path)
    with pytest.raises(DataError, match=r"but got train_size=4000, test_size=0.2, val_size=0.1 \(needs 5672\)"):
        load({"name": "sms_spam", "path": path, "train_size": 4000}, tmp_path)
    dev = tmp_path / "sst2"
    dev.mkdir()
    (dev / "train.tsv").write_text("sentence\tlabel\n" + "good \t1\nbad \t0\n" * 20)
    (dev / "dev.tsv").write_text("sentence\tlabel\n" + "fine \t1\nawful \t0\n" * 5)
    with pytest.raises(
        DataError,
        match=r"test_size must be at most the 10 rows of .*test split, but got test_size=20; lower task.test_size",
    ):
        load({"name": "sst2", "path": str(dev), "val_size": 2, "test_size": 20}, tmp_path)


def test_folder_without_the_train_file(tmp_path: Path) -> None:
    (tmp_path / "test.csv").write_text('"1","a","b"\n')
    with pytest.raises(
        DataError,
        match=r"must hold train.csv \(the train split\), but got \['test.csv'\]; or set task.path to one file",
    ):
        load({"name": "ag_news", "path": str(tmp_path)}, tmp_path)


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"task.name must be one of alpaca, sst2, ag_news, sms_spam, text_classification, but got name='imdb'",
    ):
        get_task({"name": "imdb"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"truncation_side": "middle"}, "truncation_side must be one of right, left, but got truncation_side='middle'"),
        ({"val_size": -1}, r"`task.val_size >= 1` must hold for a row count, but got val_size=-1"),
        ({"test_size": 1.5}, r"`0 < task.test_size < 1` must hold for a fraction, but got test_size=1.5"),
        ({"balance": "maybe"}, "task.balance must be true or false, but got task.balance=maybe"),
        ({"balanse": True}, r"but got task.balanse=true \(did you mean task.balance\?\)"),
        ({"max_length": 0}, "max_length >= 2"),
        ({"seed": "x"}, "task.seed must be an integer, but got task.seed=x"),
    ],
)
def test_bad_settings_fail_before_loading(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_task({"name": "sms_spam", **change})


# ------------------------------------------------------------------------------------- loss and metrics


def test_evaluate_matches_unpadded_rows_through_the_model(shared_data: Path, tmp_path: Path) -> None:
    """Padded batches give the same loss and metrics as each row alone (checks masks, last-token reading, sums)."""
    cfg = {"name": "sms_spam", "path": str(shared_data / "sms_spam" / "SMSSpamCollection"), "test_size": 40}
    task = get_task(cfg)
    data = task.load(cfg, 1024, cache_dir=tmp_path)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", num_classes=task.num_classes)).eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.tensor([data.test.row(i)])) for i in range(len(data.test))])
    labels = torch.from_numpy(data.test.labels)
    preds = logits.argmax(-1).numpy()
    metrics = task.evaluate(model, iterate_batches(data.test, 16, bucket=1))
    assert metrics["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert metrics["accuracy"] == accuracy(preds, labels.numpy())
    assert metrics["macro_f1"] == pytest.approx(macro_f1(preds, labels.numpy()))

    batch = next(iter(iterate_batches(data.train, 8, shuffle=True)))
    loss, n = task.compute_loss(model.train(), batch)
    assert n == 8 and loss.ndim == 0
    loss.backward()
    assert model.score.weight.grad is not None
