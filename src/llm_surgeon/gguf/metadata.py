"""The model hyper-parameters of a GGUF file, as llama.cpp's ``llama``, ``qwen2`` and ``deci`` loaders read them.

Uniform models get single numbers; models with per-layer widths get the ``deci`` architecture with one
INT32 entry per layer for FFN width, query heads and KV heads. The head size is always written
explicitly: otherwise llama.cpp derives it from layer 0's head count, wrong for pruned layer 0s.
"""

from __future__ import annotations

from gguf import GGUFValueType, GGUFWriter, Keys, RopeScalingType

from llm_surgeon.gguf.layout import LayerWidths, ModelLayout
from llm_surgeon.gguf.rope import RopeSettings

PER_LAYER_ARCH = "deci"
"""llama.cpp's architecture that reads FFN width and head counts per layer (NVIDIA's Nemotron/DeciLM)."""


def architecture(layout: ModelLayout, widths: tuple[LayerWidths, ...]) -> str:
    """``deci`` when layers differ, else the family's own llama.cpp architecture."""
    if len(set(widths)) > 1:
        return PER_LAYER_ARCH
    return "qwen2" if layout.model_type == "qwen2" else "llama"


def rope_is_interleaved(arch: str) -> bool:
    """Whether llama.cpp rotates adjacent dimension pairs for ``arch`` (then Q/K rows are reordered)."""
    return arch in ("llama", PER_LAYER_ARCH)


def _add_widths(writer: GGUFWriter, arch: str, widths: tuple[LayerWidths, ...]) -> None:
    keys = {
        Keys.LLM.FEED_FORWARD_LENGTH: [w.ffn for w in widths],
        Keys.Attention.HEAD_COUNT: [w.heads for w in widths],
        Keys.Attention.HEAD_COUNT_KV: [w.kv_heads for w in widths],
    }
    for key, values in keys.items():
        key = key.format(arch=arch)
        if arch == PER_LAYER_ARCH:
            writer.add_key_value(key, values, GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
        else:
            writer.add_uint32(key, values[0])


def add_model_metadata(writer: GGUFWriter, config, layout: ModelLayout, widths: tuple[LayerWidths, ...],
                       rope: RopeSettings) -> None:
    """Every ``{arch}.*`` key: sizes, per-layer widths, head size, RoPE and norm settings."""
    arch = writer.arch
    writer.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
    writer.add_embedding_length(layout.hidden)
    writer.add_block_count(len(widths))
    writer.add_vocab_size(layout.vocab)
    _add_widths(writer, arch, widths)
    writer.add_key_length(layout.head_dim)
    writer.add_value_length(layout.head_dim)
    writer.add_rope_dimension_count(layout.head_dim)
    writer.add_rope_freq_base(rope.theta)
    if rope.linear_factor is not None:
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope.linear_factor)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
