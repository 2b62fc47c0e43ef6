"""What llm-surgeon needs to know about an architecture: the adapter object and its structure description.

An adapter says where the decoder blocks are, which Linear layers inside a block are prunable, how the
final hidden states become logits, and (for structured pruning) which rows and columns — possibly slices
of fused matrices — form one removable structure. The families' adapters and their registry live in
:mod:`llm_surgeon.models.adapters`; the generic one in :mod:`llm_surgeon.models.discovery`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from llm_surgeon.errors import UnsupportedArchitectureError
from llm_surgeon.models.experts import ExpertView, install_views, restore_fused


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


def _after_ffn(layout: BlockLayout) -> int:
    return layout.ffn_width


FfnPart = tuple[tuple[Member, ...], Member]
"""One FFN of a block: the members that lose a row per removed neuron, and the one that loses a column."""


@dataclass(frozen=True)
class StructureSpec:
    """Which matrices share a removable dimension inside a block (structured pruning).

    An FFN neuron is a row of every ``ffn_in`` member (and its bias) plus a column of
    ``ffn_out``; an attention unit is one key/value head with all the query heads that
    share it: rows of ``q``, ``k``, ``v`` and the matching columns of ``o``. Members may be
    plain module paths or :class:`Member` slices of fused matrices. With ``experts`` set, a
    block's FFN neurons are those of each expert of the fused experts module at that path,
    seen per expert as ``gate_up.{e}`` (gate rows, then up rows) and ``down.{e}``; the fused
    3-D weights hold one width, so the experts of a block keep equally many neurons.
    """

    attention: str
    q: str | Member
    k: str | Member
    v: str | Member
    o: str | Member
    ffn_in: tuple[str | Member, ...] = ()
    ffn_out: str | Member = ""
    head_count_attrs: tuple[str, ...] = ()
    """Attributes of the attention module that hold its (query) head count and must follow compaction."""
    kv_head_count_attrs: tuple[str, ...] = ()
    """Attributes of the attention module that hold its key/value head count."""
    attention_reads_config: bool = False
    """The attention module reads its head counts from its ``config``; compaction gives it a copy of
    the config with the block's own counts."""
    experts: str | None = None
    """Mixture of experts (Mixtral's [E, 2I, H] / [E, H, I] layout): the fused experts module whose
    experts' neurons are the block's FFN structures, instead of ``ffn_in`` / ``ffn_out``."""

    def __post_init__(self):
        if (self.experts is None) == (not self.ffn_out):
            raise ValueError("a structure description names either ffn_in / ffn_out or experts")

    def rows(self) -> dict[str, tuple[Member, ...]]:
        """Attention row members by role: ``"q"`` and ``"kv"`` (per head group)."""
        return {"q": (_member(self.q),), "kv": (_member(self.k), _member(self.v))}

    def columns(self) -> dict[str, tuple[Member, ...]]:
        """Attention column members: ``"q"`` (the output projection's inputs)."""
        return {"q": (_member(self.o),)}

    def ffn_parts(self, experts: int = 0) -> tuple[FfnPart, ...]:
        """The block's FFNs: its MLP, or each of its ``experts`` experts."""
        if self.experts is None:
            return ((tuple(_member(m) for m in self.ffn_in), _member(self.ffn_out)),)
        return tuple(((Member(f"{self.experts}.gate_up.{e}"), Member(f"{self.experts}.gate_up.{e}", _after_ffn)),
                      Member(f"{self.experts}.down.{e}")) for e in range(experts))

    def modules(self, experts: int = 0) -> tuple[str, ...]:
        """Every module path the structures touch, each once, in a fixed order."""
        members = [*self.rows()["q"], *self.rows()["kv"], *self.columns()["q"]]
        for ins, out in self.ffn_parts(experts):
            members += [*ins, out]
        return tuple(dict.fromkeys(m.module for m in members))


def _plain_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.get_output_embeddings()(hidden)


def _has_module(block: nn.Module, rel: str) -> bool:
    try:
        return block.get_submodule(rel) is not None
    except AttributeError:
        return False


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
    it in chunks (:mod:`llm_surgeon.models.nll`)."""
    logits_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] = field(default=_plain_logits)
    """``(model, hidden) -> logits``: the LM head plus whatever the family does after it (soft-capping,
    a logit scale). It must match the model's own forward, or the curvature's gradients are wrong."""
    logits_description: str = "LM head"
    """What :attr:`logits_fn` computes, for the README's table of families."""
    input_groups: tuple[tuple[str, ...], ...] = ()
    """Layers fed the same tensor (q/k/v, gate/up): they share one ``A``. Only plans read this; the
    curvature pass finds the sharing itself from the tensors it sees."""
    experts_path: str | None = None
    """Mixture of experts: the fused experts module inside a block (``mlp.experts``). Each expert's
    ``gate_up`` and ``down`` slices become prunable layers ``{experts_path}.gate_up.{e}`` and
    ``{experts_path}.down.{e}`` (:mod:`llm_surgeon.models.experts`); routers are never listed."""
    experts_scaled_inputs: bool = False
    """Llama 4: the experts module is called with every token once per expert, already scaled by the router
    score (:class:`~llm_surgeon.models.experts.ExpertView`), instead of tokens plus routing."""
    varies_by_block: bool = False
    """The blocks differ (DeepSeek-V3: dense MLP in the first blocks, experts and a shared expert in the
    others; query projections that depend on the config): each block has those of :attr:`linear_names`
    (and of the experts) that exist in it."""

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

    def block_linear_names(self, block: nn.Module) -> tuple[str, ...]:
        """The prunable layers of one block, relative to it: the family's, then each expert's two."""
        names = self.linear_names
        if self.varies_by_block:
            names = tuple(rel for rel in names if _has_module(block, rel))
        return names + tuple(f"{self.experts_path}.{part}.{e}" for e in range(self.expert_count(block))
                             for part in ("gate_up", "down"))

    def is_expert_layer(self, rel: str) -> bool:
        """Whether ``rel`` (relative to a block) is one expert's slice of the fused experts module."""
        return self.experts_path is not None and rel.startswith(self.experts_path + ".")

    def expert_count(self, block: nn.Module) -> int:
        """How many experts ``block`` holds (0 for a dense block or family)."""
        if self.experts_path is None or not _has_module(block, self.experts_path):
            return 0
        experts = block.get_submodule(self.experts_path)
        return len(experts.gate_up) if isinstance(experts, ExpertView) else experts.gate_up_proj.shape[0]

    def prepare(self, model: nn.Module) -> None:
        """Make every prunable matrix an ``nn.Linear`` of the model (experts: per-expert views; a no-op for
        dense families). Idempotent; :meth:`restore` undoes it."""
        if self.experts_path is not None:
            install_views(self.blocks(model), self.experts_path, self.experts_scaled_inputs)

    def restore(self, model: nn.Module) -> None:
        """The model's own modules again (fused experts), holding every change made while prepared."""
        if self.experts_path is not None:
            restore_fused(self.blocks(model), self.experts_path)

    def prunable_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Ordered map from full module name to Linear, block by block (prepares the model first)."""
        self.prepare(model)
        out: dict[str, nn.Linear] = {}
        for index, block in enumerate(self.blocks(model)):
            for rel in self.block_linear_names(block):
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
            block = self.blocks(model)[index]
            block_linears = {rel: block.get_submodule(rel) for rel in self.block_linear_names(block)}
            widths += [block_linears[group[0]].in_features for group in self.input_groups if group[0] in block_linears]
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
