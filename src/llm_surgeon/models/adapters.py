"""What llm-surgeon needs to know about an architecture, in one small object per family.

An adapter says where the decoder blocks are, which Linear layers inside a block are
prunable, how the final hidden states become logits, and (for structured pruning) which
rows and columns — possibly slices of fused matrices — form one removable structure.
The family is read from ``config.model_type`` — never guessed from a name. Adding an
architecture is one :func:`register_adapter` call, from inside or outside the package.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from llm_surgeon.errors import UnsupportedArchitectureError
from llm_surgeon.models.discovery import GENERIC_PREFIX, discover_adapter, meta_model
from llm_surgeon.models.spec import ArchitectureAdapter, BlockLayout, Member, StructureSpec

__all__ = ["ArchitectureAdapter", "BlockLayout", "Member", "StructureSpec", "GENERIC_PREFIX", "get_adapter",
           "check_family", "checked_meta_model", "register_adapter", "adapter_for_model_type", "supported_model_types"]


def softcapped_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Gemma 2/3: ``cap * tanh(logits / cap)`` where the config sets ``final_logit_softcapping``."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def scaled_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Cohere: ``logits * config.logit_scale``."""
    return model.get_output_embeddings()(hidden) * model.config.logit_scale


def divided_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Granite: ``logits / config.logits_scaling``."""
    return model.get_output_embeddings()(hidden) / model.config.logits_scaling


LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LLAMA_STRUCTURE = StructureSpec(
    attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    o="self_attn.o_proj", ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
)

LLAMA_INPUT_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                      ("mlp.gate_proj", "mlp.up_proj"))

LLAMA = ArchitectureAdapter(family="llama", blocks_path="model.layers", linear_names=LLAMA_LINEARS,
                            structure=LLAMA_STRUCTURE, input_groups=LLAMA_INPUT_GROUPS)

GEMMA2 = ArchitectureAdapter(family="gemma2", blocks_path="model.layers", linear_names=LLAMA_LINEARS,
                             structure=LLAMA_STRUCTURE, logits_fn=softcapped_logits, input_groups=LLAMA_INPUT_GROUPS,
                             logits_description="`cap * tanh(logits / cap)` where the config sets a cap")

COHERE = ArchitectureAdapter(family="cohere", blocks_path="model.layers", linear_names=LLAMA_LINEARS,
                             structure=LLAMA_STRUCTURE, logits_fn=scaled_logits, input_groups=LLAMA_INPUT_GROUPS,
                             logits_description="`logits * config.logit_scale`")

PHI3 = ArchitectureAdapter(
    family="phi3",
    blocks_path="model.layers",
    linear_names=("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"),
    structure=StructureSpec(
        attention="self_attn",
        q=Member("self_attn.qkv_proj"),
        k=Member("self_attn.qkv_proj", lambda lay: lay.heads * lay.head_dim),
        v=Member("self_attn.qkv_proj", lambda lay: (lay.heads + lay.kv_heads) * lay.head_dim),
        o="self_attn.o_proj",
        ffn_in=(Member("mlp.gate_up_proj"), Member("mlp.gate_up_proj", lambda lay: lay.ffn_width)),
        ffn_out="mlp.down_proj",
        kv_head_count_attrs=("num_key_value_heads",),
        attention_reads_config=True,
    ),
)

GRANITE = ArchitectureAdapter(family="granite", blocks_path="model.layers", linear_names=LLAMA_LINEARS,
                              structure=LLAMA_STRUCTURE, logits_fn=divided_logits, input_groups=LLAMA_INPUT_GROUPS,
                              logits_description="`logits / config.logits_scaling`")

OLMO2 = ArchitectureAdapter(family="olmo2", blocks_path="model.layers", linear_names=LLAMA_LINEARS,
                            input_groups=LLAMA_INPUT_GROUPS)
"""OLMo 2 normalises the whole query and key projections (``q_norm`` over all heads): removing a head
would also have to slice those norms, so it has no structure description (unstructured and N:M)."""

STABLELM = ArchitectureAdapter(
    family="stablelm", blocks_path="model.layers", linear_names=LLAMA_LINEARS,
    structure=StructureSpec(
        attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
        o="self_attn.o_proj", ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
        head_count_attrs=("num_heads",), kv_head_count_attrs=("num_key_value_heads",),
    ),
    input_groups=LLAMA_INPUT_GROUPS,
)

GPT_NEOX = ArchitectureAdapter(
    family="gpt_neox", blocks_path="gpt_neox.layers", body_path="gpt_neox",
    linear_names=("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
)
"""GPT-NeoX interleaves query, key and value per head inside ``query_key_value`` ([heads, 3, head_dim]
rows), which the contiguous slices of a structure description cannot express: unstructured and N:M."""

ATTENTION_LINEARS = LLAMA_LINEARS[:4]
MOE_INPUT_GROUPS = (LLAMA_INPUT_GROUPS[0],)

def _experts_structure(experts: str) -> StructureSpec:
    """Llama attention heads plus each expert's FFN neurons (the experts of a block keep one width)."""
    return StructureSpec(attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                         o="self_attn.o_proj", experts=experts)


MIXTRAL = ArchitectureAdapter(family="mixtral", blocks_path="model.layers", linear_names=ATTENTION_LINEARS,
                              input_groups=MOE_INPUT_GROUPS, experts_path="mlp.experts",
                              structure=_experts_structure("mlp.experts"))
"""Mixtral, Qwen3-MoE: attention plus every expert's ``gate_up`` and ``down``; the router is never pruned.
Structured: key/value head groups and each expert's FFN neurons."""

OLMOE = ArchitectureAdapter(family="olmoe", blocks_path="model.layers", linear_names=ATTENTION_LINEARS,
                            input_groups=MOE_INPUT_GROUPS, experts_path="mlp.experts")
"""OLMoE: Mixtral's experts, but its ``q_norm`` / ``k_norm`` span all heads (as OLMo 2), so no structure
description."""

QWEN2_MOE = ArchitectureAdapter(
    family="qwen2_moe", blocks_path="model.layers",
    linear_names=ATTENTION_LINEARS + ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj",
                                      "mlp.shared_expert.down_proj"),
    input_groups=MOE_INPUT_GROUPS + (("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),),
    experts_path="mlp.experts",
)
"""Qwen2-MoE adds a shared expert (pruned like a dense MLP); its sigmoid gate, like the router, is not."""

GPT_OSS = ArchitectureAdapter(family="gpt_oss", blocks_path="model.layers", linear_names=ATTENTION_LINEARS,
                              input_groups=MOE_INPUT_GROUPS, experts_path="mlp.experts")
"""gpt-oss: biased attention projections (its per-head sinks are not weights of a matrix) and transposed,
biased experts with clamped SwiGLU gating, seen per expert through transposed views; the router is never
pruned."""

DEEPSEEK_V3 = ArchitectureAdapter(
    family="deepseek_v3", blocks_path="model.layers",
    linear_names=("self_attn.q_proj", "self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa",
                  "self_attn.kv_b_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                  "mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj", "mlp.shared_experts.down_proj"),
    input_groups=(("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa"), ("mlp.gate_proj", "mlp.up_proj"),
                  ("mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj")),
    experts_path="mlp.experts", varies_by_block=True,
)
"""DeepSeek-V3: multi-head latent attention (the low-rank query and key/value projections and their
up-projections are all prunable; ``q_proj`` instead of ``q_a_proj``/``q_b_proj`` without a query rank), a
dense MLP in the first ``first_k_dense_replace`` blocks and routed experts plus a shared expert in the
others; the router is never pruned. No structure description (heads live inside the latent projections)."""

GRANITE_MOE = ArchitectureAdapter(
    family="granitemoe", blocks_path="model.layers", linear_names=ATTENTION_LINEARS, input_groups=MOE_INPUT_GROUPS,
    experts_path="block_sparse_moe.experts", structure=_experts_structure("block_sparse_moe.experts"),
    logits_fn=divided_logits,
    logits_description="`logits / config.logits_scaling`",
)
"""Granite-MoE: Mixtral-like fused experts under ``block_sparse_moe`` (its router is a bare parameter, never
pruned) and Granite's divided logits."""

GRANITE_MOE_SHARED = ArchitectureAdapter(
    family="granitemoeshared", blocks_path="model.layers",
    linear_names=ATTENTION_LINEARS + ("shared_mlp.input_linear", "shared_mlp.output_linear"),
    input_groups=MOE_INPUT_GROUPS, experts_path="block_sparse_moe.experts", logits_fn=divided_logits,
    logits_description="`logits / config.logits_scaling`",
)
"""Granite-MoE with a shared expert (one fused ``input_linear`` for gate and up), pruned like a dense MLP."""

LLAMA4 = ArchitectureAdapter(
    family="llama4_text", blocks_path="model.layers",
    linear_names=ATTENTION_LINEARS + ("feed_forward.gate_proj", "feed_forward.up_proj", "feed_forward.down_proj",
                                      "feed_forward.shared_expert.gate_proj", "feed_forward.shared_expert.up_proj",
                                      "feed_forward.shared_expert.down_proj"),
    input_groups=MOE_INPUT_GROUPS + (("feed_forward.gate_proj", "feed_forward.up_proj"),
                                     ("feed_forward.shared_expert.gate_proj", "feed_forward.shared_expert.up_proj")),
    experts_path="feed_forward.experts", experts_scaled_inputs=True, varies_by_block=True,
)
"""Llama 4 (text): dense MLP blocks interleaved with MoE blocks (``moe_layers``); routed experts (transposed,
every token handed to every expert scaled by its sigmoid router score) plus a shared expert pruned like a
dense MLP; the router (an ``nn.Linear``) is never pruned. No structure description (its attention's
chunked and no-RoPE layers are untested for head removal)."""

OPT = ArchitectureAdapter(
    family="opt",
    blocks_path="model.decoder.layers",
    linear_names=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"),
    structure=StructureSpec(
        attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
        o="self_attn.out_proj", ffn_in=("fc1",), ffn_out="fc2", head_count_attrs=("num_heads",),
    ),
    input_groups=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),),
)

_ADAPTERS: dict[str, ArchitectureAdapter] = {}


def register_adapter(model_type: str, adapter: ArchitectureAdapter, replace: bool = False) -> None:
    """Teach llm-surgeon a family: models whose ``config.model_type`` is ``model_type`` use ``adapter``.

    Refuses to replace an existing registration unless ``replace``, so two plug-ins cannot
    silently fight over one family.
    """
    if model_type in _ADAPTERS and not replace:
        raise ValueError(f"an adapter for model type {model_type!r} is already registered; pass replace=True")
    _ADAPTERS[model_type] = adapter


for _type, _adapter in {"llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA, "gemma": GEMMA2,
                        "gemma2": GEMMA2, "gemma3_text": GEMMA2, "cohere": COHERE, "granite": GRANITE,
                        "olmo2": OLMO2, "stablelm": STABLELM, "phi3": PHI3, "gpt_neox": GPT_NEOX,
                        "opt": OPT, "mixtral": MIXTRAL, "qwen3_moe": MIXTRAL, "olmoe": OLMOE,
                        "qwen2_moe": QWEN2_MOE, "granitemoe": GRANITE_MOE, "gpt_oss": GPT_OSS,
                        "deepseek_v3": DEEPSEEK_V3, "llama4_text": LLAMA4,
                        "granitemoeshared": GRANITE_MOE_SHARED}.items():
    register_adapter(_type, _adapter)


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_for_model_type(model_type: str | None) -> ArchitectureAdapter:
    """The adapter registered for ``model_type``, or a clear error naming the supported ones."""
    if model_type not in _ADAPTERS:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported model types: "
            + ", ".join(supported_model_types())
        )
    return _ADAPTERS[model_type]


_NOTIFIED: set[str] = set()


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter registered for ``model.config.model_type``, else the generic one read from the model's
    module tree (:func:`~llm_surgeon.models.discovery.discover_adapter`, with a one-line notice); look it
    up once and pass it down."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in _ADAPTERS:
        return _ADAPTERS[model_type]
    adapter = _discovered(model, model_type)
    if model_type not in _NOTIFIED:
        _NOTIFIED.add(model_type)
        print(f"llm-surgeon: no adapter for {model_type!r}; using a generic one read from the model "
              f"({len(adapter.linear_names)} Linear layers per block; unstructured and N:M only)", file=sys.stderr)
    return adapter


def _discovered(model: nn.Module, model_type: str | None) -> ArchitectureAdapter:
    try:
        return discover_adapter(model)
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported: {exc}; supported model types: "
            + ", ".join(supported_model_types()) + " (others through the generic adapter when their blocks hold "
            "nn.Linear layers)") from exc


def checked_meta_model(config) -> nn.Module:
    """The model of ``config`` on the meta device (shapes, no weights), refused in one line when neither a
    family adapter nor the generic one can take it."""
    model_type = getattr(config, "model_type", None)
    try:
        model = meta_model(config)
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(f"architecture {model_type!r} is not supported: {exc}; supported "
                                           "model types: " + ", ".join(supported_model_types())) from exc
    if model_type not in _ADAPTERS:
        _discovered(model, model_type)
    return model


def check_family(config) -> None:
    """Refuse, before any weights are loaded, a model that neither a family adapter nor the generic one can
    take: the generic one is read from the model built on the meta device (shapes only, no weights); its
    logits check needs the weights and runs when the loaded model's adapter is asked for."""
    if getattr(config, "model_type", None) not in _ADAPTERS:
        checked_meta_model(config)
