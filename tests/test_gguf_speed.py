"""The speed comparison's structure on tiny models (no timing is asserted: CI machines vary)."""

from __future__ import annotations

import json
import math

from test_gguf_support import llama_cpp_missing, pruned_tiny_model, tiny_bpe_tokenizer

from llm_surgeon.gguf import export_gguf
from llm_surgeon.gguf.speed import compare_speed, parameter_bytes


@llama_cpp_missing
def test_gguf_against_transformers_alternates_rounds_and_reports_medians_and_ratios(tmp_path):
    model = pruned_tiny_model()
    report = export_gguf(model, tiny_bpe_tokenizer(), tmp_path / "m.gguf", out_type="f16")
    result = compare_speed(tmp_path / "m.gguf", model, vocab_size=400, prompt_tokens=32, new_tokens=8, threads=1,
                           rounds=2, labels=("gguf", "torch"))
    assert (result.a.engine, result.b.engine) == ("llama.cpp", "transformers")
    assert result.a.size_bytes == report.file_bytes and result.b.size_bytes == parameter_bytes(model)
    for side in (result.a, result.b):
        assert len(side.samples) == 2
        assert side.prompt_tokens_per_s > 0 and side.decode_tokens_per_s > 0 and side.peak_rss_delta_bytes > 0
    decode = result.a.decode_tokens_per_s / result.b.decode_tokens_per_s
    assert math.isclose(result.ratios["decode_tokens_per_s"], decode)
    assert set(result.ratios) == {"prompt_tokens_per_s", "decode_tokens_per_s", "peak_rss_delta_bytes", "size_bytes"}
    assert json.loads(json.dumps(result.to_dict()))["rounds"] == 2
