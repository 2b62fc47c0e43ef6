"""The saved model's dtype: the source's own by default (no float32 folder from a bf16 or GGUF model),
``--save-dtype`` to choose, and the summary saying the size, the dtype and what the compact model costs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from llm_surgeon import cli
from llm_surgeon.artifacts.summary import human_summary
from llm_surgeon.models.source_dtype import describe_source, source_dtype
from tests.conftest import tiny_llama, tiny_tokenizer, write_fake_wikitext


def _weights_dtypes(folder) -> set[str]:
    dtypes = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            dtypes |= {str(handle.get_tensor(name).dtype) for name in handle.keys()}  # noqa: SIM118
    return dtypes


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16") / "model"
    tiny_llama(0).to(torch.bfloat16).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_the_source_dtype_comes_from_the_config_or_the_gguf_file_type(bf16_folder, tmp_path):
    assert source_dtype(str(bf16_folder)) == torch.bfloat16
    assert source_dtype(str(tmp_path / "missing")) is None
    assert describe_source(str(bf16_folder), torch.float32) == f"{bf16_folder} in float32"


@pytest.mark.parametrize(("asked", "saved"), [("auto", "bfloat16"), ("float32", "float32"), ("float16", "float16")])
def test_prune_saves_in_the_source_dtype_unless_told(asked, saved, bf16_folder, tmp_path, capsys):
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    code = cli.main(["prune", str(bf16_folder), "--out", str(out), "--method", "magnitude", "--sparsity", "0.5",
                     "--data-dir", str(data), "--save-dtype", asked, "--no-progress"])
    assert code == 0
    assert _weights_dtypes(out) == {f"torch.{saved}"}
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["save_dtype"] == saved and report["files"]["evaluated_in"] == "float32"
    summary = capsys.readouterr().out
    assert f"MB in {saved}, dense format" in summary
    assert ("evaluated in float32 before saving" in summary) == (saved != "float32")


def test_a_bad_save_dtype_is_one_line(bf16_folder, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prune", str(bf16_folder), "--out", str(tmp_path / "o"), "--save-dtype", "int8"])
    assert exit_info.value.code == 2


def test_the_summary_shows_the_compact_model_beside_dense():
    report = {"model": "m", "model_loaded_as": "SmolLM2 from a Q4_1 GGUF, de-quantised to float32",
              "method": "surgeon", "granularity": "structured", "target_sparsity": 0.2, "shots": 1,
              "achieved_sparsity": 0.2, "seconds": {"total": 10.0, "curvature": 8.0}, "peak_memory_mb": 1024,
              "structure": {"prunable_params_after": 80, "prunable_params_before": 100},
              "footprint": {"dense": {"tokens": 256, "latency_ms_median": 400.0, "forward_peak_mb": 560.0,
                                      "parameters": 134},
                            "pruned": {"tokens": 256, "latency_ms_median": 300.0, "forward_peak_mb": 480.0,
                                       "parameters": 113}},
              "files": {"save_format": "dense", "weights_bytes": 3 * 2**20, "save_dtype": "float16",
                        "evaluated_in": "float32"}}
    text = human_summary(report, "OUT")
    assert "  model        SmolLM2 from a Q4_1 GGUF, de-quantised to float32" in text
    assert "300 ms (dense 400 ms), peak 480 MB (dense 560 MB); 113 parameters (dense 134)" in text
    assert "saved to     OUT (3 MB in float16, dense format; evaluated in float32 before saving" in text
