"""Refuse, before any file is written, models that llama.cpp would load but compute differently.

A GGUF file that loads is not proof of a correct export: llama.cpp's ``llama``/``deci`` graphs have
no QK-norm, only SiLU gates, no sliding windows and one head size for all layers. A model using any
of these would run and give wrong numbers, so every such feature is named in one clear error.
"""

from __future__ import annotations

from torch import nn

from llm_surgeon.gguf.errors import GGUFExportError
from llm_surgeon.gguf.layout import SUPPORTED_MODEL_TYPES, ModelLayout, decoder_layers, head_dim_of, read_layout
from llm_surgeon.gguf.rope import rope_problem

SILU_NAMES = ("silu", "swish")


def _attention_problems(model: nn.Module) -> list[str]:
    """QK-norm, per-layer head sizes and non-standard attention scales, found on the modules."""
    head_dim = head_dim_of(model.config)
    problems = []
    for i, block in enumerate(decoder_layers(model)):
        attention = getattr(block, "self_attn", None)
        if attention is None:
            return [f"layer {i} has no self_attn module"]
        if any(getattr(attention, n, None) is not None for n in ("q_norm", "k_norm", "q_layernorm", "k_layernorm")):
            return ["QK-norm (normalised queries and keys, as in Qwen3 or OLMo 2)"]
        own = getattr(attention, "head_dim", head_dim)
        if own != head_dim:
            return [f"layer {i} has head size {own}, the config {head_dim} (one head size for all layers)"]
        scaling = getattr(attention, "scaling", None)
        if scaling is not None and abs(scaling - head_dim**-0.5) > 1e-6 * head_dim**-0.5:
            return [f"an attention scale of {scaling:g} instead of 1/sqrt(head size)"]
    return problems


def _sliding_window_problem(config) -> str | None:
    """A sliding window that changes results within the context length (llama/deci attend fully)."""
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return "sliding-window attention layers"
    window = getattr(config, "sliding_window", None)
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        window = None
    if window is not None and window < getattr(config, "max_position_embeddings", 0):
        return f"a sliding attention window of {window} tokens"
    return None


def _width_problems(layout: ModelLayout) -> list[str]:
    """Layers whose head counts llama.cpp cannot group (GQA needs whole query groups per KV head)."""
    problems = []
    for i, w in enumerate(layout.layers):
        if (w.heads == 0) != (w.kv_heads == 0) or (w.kv_heads and w.heads % w.kv_heads):
            problems.append(f"layer {i} has {w.heads} query heads for {w.kv_heads} KV heads")
    return problems


def _config_problems(model: nn.Module) -> list[str]:
    config = model.config
    problems = []
    act = getattr(config, "hidden_act", "silu")
    if act not in SILU_NAMES:
        problems.append(f"FFN activation {act!r} (llama.cpp's llama/deci gate with SiLU only)")
    for problem in (_sliding_window_problem(config), rope_problem(config)):
        if problem:
            problems.append(problem)
    return problems


def export_problems(model: nn.Module) -> list[str]:
    """Everything that prevents an exact export, empty when the model can be written."""
    try:
        problems = _attention_problems(model) + _config_problems(model)
        layout = read_layout(model)
    except GGUFExportError as err:
        return [str(err)]
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(f"model type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    return problems + _width_problems(layout)


def check_exportable(model: nn.Module) -> ModelLayout:
    """The model's layout, or a :class:`GGUFExportError` listing every reason it cannot be exported."""
    problems = export_problems(model)
    if problems:
        raise GGUFExportError("cannot export this model to GGUF for llama.cpp: " + "; ".join(problems))
    return read_layout(model)
