"""The GGUF path on the command line: prune -> export -> eval in llama.cpp equals eval in transformers; speed
gives its ratios; refusals are one line with no file written."""

from __future__ import annotations

import json
import math

import pytest
from test_gguf_support import CORPUS, llama_cpp_missing, tiny_bpe_tokenizer, tiny_model

from llm_surgeon import cli


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny Llama with a real BPE tokenizer, and the same model structurally pruned to 30% by the CLI."""
    root = tmp_path_factory.mktemp("gguf-cli")
    dense = root / "dense"
    model = tiny_model("llama", seed=1)
    model.save_pretrained(dense)
    tiny_bpe_tokenizer().save_pretrained(dense)
    text = root / "corpus.txt"
    text.write_text(CORPUS)
    pruned = root / "pruned"
    code = cli.main(["prune", str(dense), "--out", str(pruned), "--method", "magnitude", "--granularity",
                     "structured", "--sparsity", "0.3", "--no-progress", "--json"])
    assert code == 0
    return root, dense, pruned, text


def _json_of(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@llama_cpp_missing
def test_a_pruned_folder_exports_and_scores_the_same_in_llama_cpp(folders, capfd):
    capsys = capfd  # llama.cpp writes from C: its stderr is the file descriptor's
    root, _, pruned, text = folders
    gguf = root / "pruned-f32.gguf"
    assert cli.main(["export", str(pruned), "--out", str(gguf), "--type", "f32", "--json"]) == 0
    written = _json_of(capsys)
    assert written["architecture"] == "deci" and gguf.is_file()  # per-layer widths
    widths = {(layer["ffn"], layer["kv_heads"]) for layer in written["layers"]}
    assert len(widths) > 1
    flags = ["--dataset", str(text), "--seqlen", "48", "--json", "--no-progress"]
    assert cli.main(["eval", str(pruned), *flags]) == 0
    reference = _json_of(capsys)
    assert cli.main(["eval", str(gguf), "--engine", "llama.cpp", "--threads", "1", *flags]) == 0
    scored = json.loads((captured := capsys.readouterr()).out.strip().splitlines()[-1])
    assert not [line for line in captured.err.splitlines() if line.startswith("llama")]  # llama.cpp's notes kept
    assert scored["windows"] == reference["windows"] and scored["tokens"] == reference["tokens"]
    assert math.isclose(scored["ppl"], reference["ppl"], rel_tol=1e-3)


@llama_cpp_missing
def test_speed_compares_a_pruned_model_with_its_dense_source(folders, capsys):
    _, dense, pruned, _ = folders
    code = cli.main(["speed", str(pruned), "--against", str(dense), "--engine", "llama.cpp", "--prompt", "16",
                     "--generate", "4", "--rounds", "1", "--threads", "1", "--type", "f32", "--json"])
    assert code == 0
    result = _json_of(capsys)
    assert result["decode_ratio"] > 0 and result["prompt_ratio"] > 0
    assert result["ratios"]["size_bytes"] < 1.0  # the pruned file is smaller
    assert result["threads"] == 1 and result["machine"]


def test_export_refuses_what_llama_cpp_cannot_run_before_writing(tmp_path, capsys):
    folder = tmp_path / "qwen3"
    tiny_model("qwen3", seed=0).save_pretrained(folder)  # QK-norm: deci cannot express it
    tiny_bpe_tokenizer().save_pretrained(folder)
    out = tmp_path / "q.gguf"
    assert cli.main(["export", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm-surgeon: error:")
    assert not out.exists() and not list(tmp_path.glob(".q.gguf*"))


def test_export_and_eval_refuse_bad_flags_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "smollm2-135m", "--out", str(tmp_path / "x.gguf"), "--type", "q9"])
    assert exit_info.value.code == 2
    assert cli.main(["export", str(tmp_path), "--out", str(tmp_path / "x.bin")]) == 2
    assert "ends in .gguf" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "missing.gguf"), "--engine", "llama.cpp"]) == 2
    assert "is not one" in capsys.readouterr().err


@llama_cpp_missing
def test_prune_save_format_gguf_writes_the_folder_and_a_gguf_that_scores_the_same(folders, tmp_path, capsys):
    root, dense, _, text = folders
    out = tmp_path / "pruned-gguf"
    assert cli.main(["prune", str(dense), "--out", str(out), "--method", "magnitude", "--granularity", "structured",
                     "--sparsity", "0.3", "--save-format", "gguf", "--no-progress", "--json"]) == 0
    capsys.readouterr()
    gguf = out / "model-f16.gguf"
    assert gguf.is_file() and (out / "config.json").is_file()  # the structured folder beside the file
    assert json.loads((out / "report.json").read_text())["files"]["save_format"] == "gguf"
    flags = ["--dataset", str(text), "--seqlen", "48", "--json", "--no-progress"]
    assert cli.main(["eval", str(out), *flags]) == 0
    reference = _json_of(capsys)
    assert cli.main(["eval", str(gguf), "--engine", "llama.cpp", "--threads", "1", *flags]) == 0
    scored = _json_of(capsys)
    assert scored["windows"] == reference["windows"]
    assert math.isclose(scored["ppl"], reference["ppl"], rel_tol=1e-2)  # f16 weights


def test_prune_save_format_gguf_refuses_a_model_llama_cpp_cannot_run_before_pruning(tmp_path, capsys):
    folder = tmp_path / "qwen3"
    tiny_model("qwen3", seed=0).save_pretrained(folder)
    tiny_bpe_tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    assert cli.main(["prune", str(folder), "--out", str(out), "--method", "magnitude", "--sparsity", "0.3",
                     "--save-format", "gguf", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--save-format gguf" in err[0] and "QK-norm" in err[0]
    assert not out.exists()
