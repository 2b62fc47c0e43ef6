"""``benchmarks/gpu_check.py`` on this CPU with a tiny config, so the prepared GPU check cannot rot unseen."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_the_gpu_check_runs_on_a_cpu_and_writes_both_shots(tmp_path):
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 128}
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    out = tmp_path / "check.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--config",
                          str(tmp_path / "tiny.json"), "--samples", "4", "--seqlen", "32", "--skip-tests",
                          "--speed-prompt", "16", "--speed-generate", "4",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["matmul_bf16_tflops"] > 0 and result["model"]["parameters"] > 0
    first, second = result["shots"]
    assert first["granularity"] == "unstructured" and first["achieved_sparsity"] == 0.5
    assert not first["curvature_replayed"] and first["curvature_tflops"] > 0 and first["peak_mb"] > 0
    assert second["granularity"] == "2:4" and second["nm_valid"] and second["curvature_replayed"]
    assert second["achieved_sparsity"] == 0.5
    speed = result["structured_speed"]["kept"]
    assert set(speed) == {"100%", "80%", "70%"}
    assert speed["100%"]["parameters"] > speed["80%"]["parameters"] > speed["70%"]["parameters"]
    assert speed["70%"]["decode_tokens_per_s"] > 0 and speed["80%"]["decode_tokens_per_s_ratio"] > 0
