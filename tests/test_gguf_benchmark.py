"""``benchmarks/gguf_speed.py`` end to end on a tiny model, so the issue-35 benchmark cannot rot unseen:
prune (structured LLM Surgeon), export, perplexity in both engines, speed against dense, a rerun that
reads every step back."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from test_gguf_support import llama_cpp_missing, tiny_bpe_tokenizer, tiny_model

from tests.conftest import REPO, write_fake_wikitext


@llama_cpp_missing
def test_the_gguf_benchmark_measures_a_tiny_prune_in_both_engines(tmp_path):
    model = tmp_path / "model"
    tiny_model("llama", seed=2).save_pretrained(model)
    tiny_bpe_tokenizer().save_pretrained(model)
    data = write_fake_wikitext(tmp_path / "data")
    work = tmp_path / "work"
    command = [sys.executable, str(REPO / "benchmarks" / "gguf_speed.py"), "--model", str(model), "--work", str(work),
               "--data-dir", str(data), "--kept", "0.8", "--types", "f32", "--calib-samples", "4",
               "--calib-seqlen", "32", "--eval-windows", "2", "--eval-seqlen", "64", "--prompt", "8",
               "--generate", "2", "--rounds", "1", "--threads", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    ppl = results["ppl"]
    for label in ("dense", "80% kept"):  # the f32 file scores what transformers scores
        assert math.isclose(ppl[f"{label} f32"]["ppl"], ppl[f"{label} transformers"]["ppl"], rel_tol=1e-3)
    assert ppl["80% kept f32"]["windows"] == 2
    speed = results["speed"]["80% kept f32"]
    assert speed["ratios"]["size_bytes"] < 1 and speed["decode_ratio"] > 0
    assert "| 80% kept | f32 |" in run.stdout and "| 80% kept | transformers |" in run.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "$ llm-surgeon" not in again.stdout  # every step read back
