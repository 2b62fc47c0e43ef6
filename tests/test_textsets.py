"""Calibration and evaluation text from named sets in the data folder and from the user's own files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from llm_surgeon.data import textsets
from llm_surgeon.data.calibration import calibration_windows, evaluation_tokens
from llm_surgeon.data.textsets import (
    TextSet,
    calibration_text,
    check_calibration_files,
    check_evaluation_files,
    evaluation_text,
    parse_text_set,
    parse_text_sets,
)
from llm_surgeon.errors import DataError
from tests.conftest import CharTokenizer, write_fake_wikitext

DOCS = [f"document {i}: " + "words " * (i % 7 + 3) for i in range(1105)]


def write_c4(folder: Path, splits=("train", "validation"), compressed: bool = True) -> Path:
    c4 = folder / "c4"
    c4.mkdir(parents=True, exist_ok=True)
    for split in splits:
        lines = "".join(json.dumps({"text": f"{split} {doc}", "timestamp": "x"}) + "\n" for doc in DOCS)
        name = textsets._split_files("c4", split)[0 if compressed else 1]
        if compressed:
            (folder / name).write_bytes(gzip.compress(lines.encode()))
        else:
            (folder / name).write_text(lines)
    return folder


def write_ptb(folder: Path, splits=("train", "valid", "test")) -> Path:
    (folder / "ptb").mkdir(parents=True, exist_ok=True)
    for split in splits:
        (folder / "ptb" / f"ptb.{split}.txt").write_text(
            "".join(f" {split} sentence number {i} <unk> \n" for i in range(50)) + "\n")
    return folder


def test_ptb_sentences_are_stripped_and_joined_with_spaces(tmp_path):
    data = write_ptb(tmp_path)
    text = evaluation_text(TextSet("ptb"), data)
    assert text == " ".join(f"test sentence number {i} <unk>" for i in range(50))
    calib, split = calibration_text(TextSet("ptb"), data, 10, 0)
    assert split == "train" and calib.startswith("train sentence number 0 <unk> train sentence")


def test_ptb_calibration_falls_back_to_valid_with_a_warning(tmp_path):
    data = write_ptb(tmp_path, splits=("valid", "test"))
    with pytest.warns(UserWarning, match="ptb train split not found; calibrating on the valid split"):
        _, split = calibration_text(TextSet("ptb"), data, 10, 0)
    assert split == "valid"


@pytest.mark.parametrize("compressed", [True, False])
def test_c4_evaluation_is_the_first_1100_validation_documents(tmp_path, compressed):
    data = write_c4(tmp_path, compressed=compressed)
    text = evaluation_text(TextSet("c4"), data)
    assert text == "\n\n".join(f"validation {doc}" for doc in DOCS[:1100])
    assert TextSet("c4").window_cap == 256 and TextSet("x.txt", Path("x.txt")).window_cap is None


def test_c4_calibration_draws_train_documents_by_seed(tmp_path):
    data = write_c4(tmp_path)
    first, split = calibration_text(TextSet("c4"), data, needed_tokens=100, seed=0)
    again, _ = calibration_text(TextSet("c4"), data, needed_tokens=100, seed=0)
    other, _ = calibration_text(TextSet("c4"), data, needed_tokens=100, seed=1)
    assert split == "train" and first == again and first != other
    documents = first.split("\n\n")
    assert all(doc.startswith("train document") for doc in documents)
    assert len(set(documents)) == len(documents)  # drawn without replacement
    assert sum(map(len, documents)) >= 100 * textsets.CHARS_PER_TOKEN * 2 - max(map(len, DOCS))
    assert len(documents) < len(DOCS) // 2  # a sample, not the shard


def test_c4_falls_back_to_validation_for_calibration(tmp_path):
    data = write_c4(tmp_path, splits=("validation",))
    with pytest.warns(UserWarning, match="calibrating on the validation split"):
        text, split = calibration_text(TextSet("c4"), data, 50, 0)
    assert split == "validation" and text.startswith("validation document")


def test_wikitext2_is_unchanged(tmp_path):
    data = write_fake_wikitext(tmp_path)
    rows = (data / "wikitext-2-raw" / "wiki.test.raw").read_text().splitlines(keepends=True)
    expected = "\n\n".join("" if r.strip() == "" else r for r in rows)
    assert evaluation_text(TextSet("wikitext2"), data) == expected
    tokens = evaluation_tokens(CharTokenizer(), data)
    assert tokens.numel() == len(expected.encode())


def write_records(path: Path, records: list, kind: str) -> Path:
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    elif kind == "json":
        path.write_text(json.dumps(records))
    elif kind == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        import pyarrow as pa

        pq.write_table(pa.table({k: [r[k] for r in records] for k in records[0]}), path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "jsonl.gz", "parquet"])
def test_record_files_join_the_field_with_blank_lines(tmp_path, kind):
    records = [{"body": f"record {i} about pruning", "id": i} for i in range(5)]
    path = write_records(tmp_path / f"mine.{kind}", records, kind)
    text_set = parse_text_set(str(path), text_field="body")
    assert text_set.name == path.name and text_set.path == path
    expected = "\n\n".join(r["body"] for r in records)
    assert evaluation_text(text_set, None) == expected
    assert calibration_text(text_set, None, 10, 0) == (expected, "file")


def test_plain_text_file_is_read_whole(tmp_path):
    path = tmp_path / "domain.txt"
    path.write_text("line one\n\nline two\n" * 40)
    windows, spec = calibration_windows(CharTokenizer(), 3, 16, 0, None, parse_text_set(str(path)))
    assert windows.shape == (3, 16) and spec.dataset == "domain.txt" and spec.split == "file"
    text = path.read_text()
    for row in windows:  # every window is a slice of the file's bytes
        assert bytes(row.tolist()).decode() in text


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_missing_field_names_the_fields_there_are(tmp_path, kind):
    path = write_records(tmp_path / f"mine.{kind}", [{"content": "abc", "id": 1}], kind)
    with pytest.raises(DataError, match=r"no (field|column) 'text' \(it has: .*content.*\); choose --text-field"):
        evaluation_text(parse_text_set(str(path)), None)


@pytest.mark.parametrize("content,expected", [
    ("", "holds no text"),
    ("   \n\n", "holds no text"),
])
def test_an_empty_file_is_refused(tmp_path, content, expected):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        evaluation_text(parse_text_set(str(path)), None)


def test_bad_records_are_refused_with_their_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{not json}\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        evaluation_text(parse_text_set(str(path)), None)
    path.write_text('{"text": 3}\n')
    with pytest.raises(DataError, match="field 'text' is int, not text"):
        evaluation_text(parse_text_set(str(path)), None)


@pytest.mark.parametrize("spec,expected", [
    ("nonsense", "unknown dataset 'nonsense'"),
    ("missing.jsonl", "text file not found"),
    ("wikitext2,wikitext2", "named twice"),
    ("", "no dataset given"),
])
def test_unknown_sets_are_refused(tmp_path, spec, expected):
    with pytest.raises(DataError, match=expected):
        parse_text_sets(spec)


def test_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match="unknown text file type '.csv'"):
        parse_text_set(str(path))


def test_missing_named_sets_are_refused_before_loading(tmp_path):
    data = write_fake_wikitext(tmp_path)
    check_evaluation_files(TextSet("wikitext2"), data)
    check_calibration_files(TextSet("wikitext2"), data)
    with pytest.raises(DataError, match=r"ptb evaluation text not found: expected ptb/ptb.test.txt in"):
        check_evaluation_files(TextSet("ptb"), data)
    with pytest.raises(DataError, match=r"c4 calibration text not found: expected c4/c4-train"):
        check_calibration_files(TextSet("c4"), data)


def test_text_shorter_than_the_calibration_asks_names_the_set(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("too short")
    with pytest.raises(DataError, match="short.txt calibration text has 9 tokens, fewer than the 2 x 16"):
        calibration_windows(CharTokenizer(), 2, 16, 0, None, parse_text_set(str(path)))


def test_c4_evaluation_scores_at_most_its_cap(tmp_path, monkeypatch):
    from llm_surgeon.api import evaluate
    from tests.conftest import tiny_llama

    monkeypatch.setattr(textsets, "C4_EVAL_WINDOWS", 2)
    data = write_c4(tmp_path, splits=("validation",))
    model = tiny_llama().eval()
    capped = evaluate(model, CharTokenizer(), data, seqlen=16, progress=False, dataset="c4")
    assert capped.windows == 2 and capped.dataset == "c4"
    fewer = evaluate(model, CharTokenizer(), data, seqlen=16, max_windows=1, progress=False, dataset="c4")
    assert fewer.windows == 1
    torch.testing.assert_close(torch.tensor(capped.text_tokens), torch.tensor(fewer.text_tokens))


def test_prune_calibrates_on_a_file_and_evaluates_several_sets(tmp_path):
    from tests.conftest import run_cli, write_tiny_checkpoint

    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_ptb(write_fake_wikitext(tmp_path / "data"))
    domain = write_records(tmp_path / "domain.jsonl", [{"body": "domain text " * 30} for _ in range(20)], "jsonl")
    out = tmp_path / "out"
    run_cli("prune", str(model), "--out", str(out), "--method", "surgeon", "--sparsity", "0.5", "--shots", "1",
            "--calib-samples", "4", "--calib-seqlen", "32", "--calib-data", str(domain), "--text-field", "body",
            "--data-dir", str(data), "--eval", "--eval-dense", "--eval-seqlen", "32", "--eval-max-windows", "2",
            "--eval-datasets", f"wikitext2,ptb,{domain}", "--no-progress")
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["dataset"] == "domain.jsonl" and report["calibration"]["split"] == "file"
    assert report["config"]["calib_data"] == str(domain) and report["config"]["text_field"] == "body"
    for name in ("wikitext2", "ptb", "domain.jsonl"):
        assert report["ppl"][name] > 1 and report["ppl"][f"{name}_detail"]["dataset"] == name
        assert report["ppl"][f"dense_{name}"]["windows"] == 2
    assert report["ppl"]["ptb"] != report["ppl"]["wikitext2"]

    evaluated = json.loads(run_cli("eval", str(out), "--dataset", f"ptb,{domain}", "--text-field", "body",
                                   "--data-dir", str(data), "--seqlen", "32", "--max-windows", "2", "--json",
                                   "--no-progress").stdout)
    assert set(evaluated["datasets"]) == {"ptb", "domain.jsonl"} and evaluated["dataset"] == "ptb"
    for name in ("ptb", "domain.jsonl"):
        assert abs(evaluated["datasets"][name]["ppl"] - report["ppl"][name]) < 1e-3 * report["ppl"][name]


def test_prune_refuses_a_missing_calibration_set_before_loading(tmp_path):
    from tests.conftest import run_cli

    data = write_fake_wikitext(tmp_path / "data")
    proc = run_cli("prune", str(tmp_path / "no-model"), "--out", str(tmp_path / "out"), "--calib-data", "c4",
                   "--data-dir", str(data), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "c4 calibration text not found" in proc.stderr or "no-model" in proc.stderr
    proc = run_cli("prune", str(tmp_path / "no-model"), "--out", str(tmp_path / "out"), "--calib-data", "x.jsonl",
                   check=False)
    assert proc.returncode == 2 and "text file not found" in proc.stderr and not (tmp_path / "out").exists()


def test_bench_evaluates_every_set_and_tables_them(tmp_path):
    import subprocess
    import sys

    from tests.conftest import write_tiny_checkpoint

    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_ptb(write_fake_wikitext(tmp_path / "data"))
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "llm_surgeon.cli", "bench", str(model), "--out", str(out), "--methods", "magnitude",
           "--sparsities", "0.5", "--calib-samples", "4", "--calib-seqlen", "32", "--eval-seqlen", "32",
           "--eval-max-windows", "2", "--eval-datasets", "wikitext2,ptb", "--data-dir", str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads((out / "results.json").read_text())["runs"]
    for record in runs.values():
        assert set(record["ppl_by_dataset"]) == {"wikitext2", "ptb"}
        assert record["ppl"] == record["ppl_by_dataset"]["wikitext2"]
    table = (out / "results.md").read_text()
    assert "### Perplexity on each evaluation set" in table
    assert "| method | granularity | kept | WikiText-2 | PTB |" in table
    assert "Evaluation: WikiText-2, PTB" in table
