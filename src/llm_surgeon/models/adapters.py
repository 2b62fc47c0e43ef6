"""What llm-surgeon needs to know about an architecture, in one small object per family.

An adapter says where the decoder blocks are, which Linear layers inside a block are
prunable, how the final hidden states become logits, and (for structured pruning) which
rows and columns — possibly slices of fused matrices — form one removable structure.
The family is read from ``config.model_type`` — never guessed from a name. Adding an
architecture is one :func:`register_adapter` call, from inside or outside the package.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from llm_surgeon.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class BlockLayout:
    """The widths a block's structures are counted in: heads, key/value heads, head dim, FFN width."""

    heads: int
    kv_heads: int
    head_dim: int
    ffn_width: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.heads // self.kv_heads


def _at_zero(layout: BlockLayout) -> int:
    return 0


@dataclass(frozen=True)
class Member:
    """Rows (or columns) of one Linear inside a block that belong to a structure.

    ``offset`` gives where the member starts inside the matrix, from the block's layout: 0 for a
    plain projection, e.g. ``heads * head_dim`` for the key rows of a fused ``qkv_proj``.
    """

    module: str
    offset: Callable[[BlockLayout], int] = _at_zero


def _member(value: str | Member) -> Member:
    return value if isinstance(value, Member) else Member(value)


@dataclass(frozen=True)
class StructureSpec:
    """Which matrices share a removable dimension inside a block (structured pruning).

    An FFN neuron is a row of every ``ffn_in`` member (and its bias) plus a column of
    ``ffn_out``; an attention unit is one key/value head with all the query heads that
    share it: rows of ``q``, ``k``, ``v`` and the matching columns of ``o``. Members may be
    plain module paths or :class:`Member` slices of fused matrices.
    """

    attention: str
    q: str | Member
    k: str | Member
    v: str | Member
    o: str | Member
    ffn_in: tuple[str | Member, ...]
    ffn_out: str | Member
    head_count_attrs: tuple[str, ...] = ()
    """Attributes of the attention module that hold its (query) head count and must follow compaction."""
    kv_head_count_attrs: tuple[str, ...] = ()
    """Attributes of the attention module that hold its key/value head count."""
    attention_reads_config: bool = False
    """The attention module reads its head counts from its ``config``; compaction gives it a copy of
    the config with the block's own counts."""

    def rows(self) -> dict[str, tuple[Member, ...]]:
        """Row members by role: ``"ffn"`` (one row per neuron), ``"q"`` and ``"kv"`` (per head group)."""
        return {"ffn": tuple(_member(m) for m in self.ffn_in), "q": (_member(self.q),),
                "kv": (_member(self.k), _member(self.v))}

    def columns(self) -> dict[str, tuple[Member, ...]]:
        """Column members by role: ``"ffn"`` and ``"q"`` (the output projection's inputs)."""
        return {"ffn": (_member(self.ffn_out),), "q": (_member(self.o),)}

    def modules(self) -> tuple[str, ...]:
        """Every module path the structures touch, each once, in a fixed order."""
        members = [*self.rows()["q"], *self.rows()["kv"], *self.columns()["q"], *self.rows()["ffn"],
                   *self.columns()["ffn"]]
        return tuple(dict.fromkeys(m.module for m in members))


def _plain_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.get_output_embeddings()(hidden)


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Locations of the decoder blocks and their prunable Linear layers, and the way to logits."""

    family: str
    blocks_path: str
    """Dotted attribute path from the ``*ForCausalLM`` model to its list of decoder blocks."""
    linear_names: tuple[str, ...]
    """Prunable Linear layers, as paths relative to a decoder block."""
    structure: StructureSpec | None = None
    body_path: str = "model"
    """The module whose ``last_hidden_state`` :meth:`logits` maps to logits; the loss is computed from
    it in chunks (:mod:`llm_surgeon.nll`)."""
    logits_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] = field(default=_plain_logits)
    """``(model, hidden) -> logits``: the LM head plus whatever the family does after it (soft-capping,
    a logit scale). It must match the model's own forward, or the curvature's gradients are wrong."""
    input_groups: tuple[tuple[str, ...], ...] = ()
    """Layers fed the same tensor (q/k/v, gate/up): they share one ``A``. Only plans read this; the
    curvature pass finds the sharing itself from the tensors it sees."""

    def body(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.body_path)

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return self.logits_fn(model, hidden)

    def head_layout(self, config) -> tuple[int, int, int]:
        """(query heads, key/value heads, head dim) from a model config."""
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return heads, kv_heads, head_dim

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks_path)

    def module_name(self, block: int, rel: str) -> str:
        """Full module name of ``rel`` (a path inside a decoder block) in block number ``block``."""
        return f"{self.blocks_path}.{block}.{rel}"

    def prunable_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Ordered map from full module name to Linear, block by block."""
        out: dict[str, nn.Linear] = {}
        for index, block in enumerate(self.blocks(model)):
            for rel in self.linear_names:
                module = block.get_submodule(rel)
                if not isinstance(module, nn.Linear):
                    raise UnsupportedArchitectureError(
                        f"{self.family} adapter expected nn.Linear at {rel}, found {type(module).__name__}"
                    )
                out[self.module_name(index, rel)] = module
        return out

    def distinct_input_widths(self, model: nn.Module) -> list[int]:
        """Input width of every distinct ``A`` of the model: one per input group per block, one per other layer."""
        widths = []
        for index in range(len(self.blocks(model))):
            grouped = {rel for group in self.input_groups for rel in group}
            block_linears = {rel: self.blocks(model)[index].get_submodule(rel) for rel in self.linear_names}
            widths += [block_linears[group[0]].in_features for group in self.input_groups]
            widths += [lin.in_features for rel, lin in block_linears.items() if rel not in grouped]
        return widths

    def set_head_counts(self, attention: nn.Module, heads: int, kv_heads: int) -> None:
        """Make an attention module agree with its compacted projections."""
        spec = self.structure
        for attr in spec.head_count_attrs:
            setattr(attention, attr, heads)
        for attr in spec.kv_head_count_attrs:
            setattr(attention, attr, kv_heads)
        if spec.attention_reads_config:
            own = copy.copy(attention.config)
            own.num_attention_heads, own.num_key_value_heads = heads, kv_heads
            attention.config = own


def softcapped_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Gemma 2/3: ``cap * tanh(logits / cap)`` where the config sets ``final_logit_softcapping``."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def scaled_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Cohere: ``logits * config.logit_scale``."""
    return model.get_output_embeddings()(hidden) * model.config.logit_scale


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
                             structure=LLAMA_STRUCTURE, logits_fn=softcapped_logits, input_groups=LLAMA_INPUT_GROUPS)

COHERE = ArchitectureAdapter(family="cohere", blocks_path="model.layers", linear_names=LLAMA_LINEARS,
                             structure=LLAMA_STRUCTURE, logits_fn=scaled_logits, input_groups=LLAMA_INPUT_GROUPS)

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


for _type, _adapter in {"llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA, "gemma2": GEMMA2,
                        "cohere": COHERE, "phi3": PHI3, "opt": OPT}.items():
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


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model.config.model_type``; look it up once and pass it down."""
    return adapter_for_model_type(getattr(getattr(model, "config", None), "model_type", None))
