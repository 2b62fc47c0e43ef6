"""Physically smaller models: compaction after structured pruning, and resizing a model to recorded widths.

After the shot loop has zeroed whole rows and columns, :func:`compact` replaces every touched
Linear by a smaller one and makes the attention module agree with its new head count.
transformers configs hold one width for all blocks, so the widths (a
:class:`~llm_surgeon.artifacts.structured_layout.StructuredLayout`) are saved beside the weights and
:func:`apply_shapes` resizes a freshly built model to them before its weights are loaded (the
``structured`` save format, :mod:`llm_surgeon.artifacts.formats.structured`).
"""

from __future__ import annotations

import torch
from torch import nn

from llm_surgeon.artifacts.structured_layout import ARCHITECTURE_FILE, BlockWidths, StructuredLayout
from llm_surgeon.engine.structures import BlockStructures, block_structures, state_from_masks
from llm_surgeon.errors import ModelLoadError
from llm_surgeon.models.adapters import ArchitectureAdapter, BlockLayout, get_adapter


def _replace(parent: nn.Module, rel: str, new: nn.Module) -> None:
    *path, leaf = rel.split(".")
    owner = parent.get_submodule(".".join(path)) if path else parent
    setattr(owner, leaf, new)


def _sliced_linear(lin: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    W = lin.weight.detach()
    W = W[rows] if rows is not None else W
    W = W[:, cols] if cols is not None else W
    new = nn.Linear(W.shape[1], W.shape[0], bias=lin.bias is not None, device=W.device, dtype=W.dtype)
    with torch.no_grad():
        new.weight.copy_(W)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach()[rows] if rows is not None else lin.bias.detach())
    return new


def _kept(size: int, removed: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[removed] = False
    return keep.nonzero().squeeze(1)


EXPERT_WIDTH_ALIGNMENT = 8
"""Compacted experts keep a multiple of 8 neurons: transformers runs fused experts with grouped matrix
products that need 16-byte strides (8 bf16 values). The few neurons added back are removed ones, all
zeros, so the outputs are unchanged."""


def _padded_keep(removed: torch.Tensor, width: int) -> torch.Tensor:
    """The kept neurons of one expert, plus the first removed ones (zero weights) up to ``width``."""
    kept, dropped = (~removed).nonzero().squeeze(1), removed.nonzero().squeeze(1)
    return torch.cat([kept, dropped[: width - kept.numel()]]).sort().values


def _resize_experts(fused: nn.Module, keep: list[torch.Tensor] | None, width: int) -> None:
    """Mixtral-layout experts ([E, 2I, H] / [E, H, I]) keeping ``keep[e]`` neurons of expert ``e`` (all of
    one count), or, with ``keep`` None, emptied to ``width`` neurons (weights loaded after)."""
    gate_up, down = fused.gate_up_proj.detach(), fused.down_proj.detach()
    full = down.shape[-1]
    if keep is None:
        new_gate_up = gate_up.new_empty(gate_up.shape[0], 2 * width, gate_up.shape[2])
        new_down = down.new_empty(down.shape[0], down.shape[1], width)
    else:
        new_gate_up = torch.stack([gate_up[e][torch.cat([k, k + full])] for e, k in enumerate(keep)])
        new_down = torch.stack([down[e][:, k] for e, k in enumerate(keep)])
    fused.gate_up_proj = nn.Parameter(new_gate_up, requires_grad=fused.gate_up_proj.requires_grad)
    fused.down_proj = nn.Parameter(new_down, requires_grad=fused.down_proj.requires_grad)
    if hasattr(fused, "intermediate_dim"):
        fused.intermediate_dim = width


def compact(model: nn.Module, masks: dict[str, torch.Tensor], adapter: ArchitectureAdapter | None = None
            ) -> StructuredLayout:
    """Replace pruned Linear layers by smaller ones (experts: the fused weights by narrower ones, every expert
    keeping its own neurons); return the per-block widths for saving."""
    adapter = adapter or get_adapter(model)
    units = block_structures(model, adapter)
    neurons, groups = state_from_masks(units, adapter.module_name, masks)
    adapter.restore(model)  # experts: the fused module again, resized below
    experts_path = adapter.structure.experts
    blocks = []
    for b, (block, u) in enumerate(zip(adapter.blocks(model), units, strict=True)):
        for rel, (kind, idx) in u.removed_indices(neurons[b], groups[b]).items():
            if adapter.is_expert_layer(rel):
                continue
            lin = u.linears[rel]
            if kind == "rows":
                _replace(block, rel, _sliced_linear(lin, _kept(lin.out_features, idx), None))
            else:
                _replace(block, rel, _sliced_linear(lin, None, _kept(lin.in_features, idx)))
        width = int((~neurons[b]).sum(1).max())
        if experts_path is not None:
            width = min(-(-width // EXPERT_WIDTH_ALIGNMENT) * EXPERT_WIDTH_ALIGNMENT, u.layout.ffn_width)
            keep = [_padded_keep(removed, width) for removed in neurons[b]]
            _resize_experts(block.get_submodule(experts_path), keep, width)
        kv_heads = int((~groups[b]).sum())
        heads = kv_heads * u.layout.group_size
        adapter.set_head_counts(block.get_submodule(u.spec.attention), heads, kv_heads)
        blocks.append(BlockWidths(width, heads, kv_heads))
    return StructuredLayout(tuple(blocks))


def _compact_shape(u: BlockStructures, rel: str, lin: nn.Linear, after: BlockLayout) -> tuple[int, int]:
    """(out, in) of module ``rel`` once the block has the widths of ``after``."""
    out, inp = lin.out_features, lin.in_features
    lost = {role: u.role_width(role) - u.role_width(role, after) for role in ("ffn", "q", "kv")}
    for role, members in u.spec.rows().items():
        out -= sum(lost[role] for m in members if m.module == rel)
    inp -= sum(lost["q"] for m in u.spec.columns()["q"] if m.module == rel)
    for ins, ffn_out in u.parts:
        out -= sum(lost["ffn"] for m in ins if m.module == rel)
        inp -= lost["ffn"] if ffn_out.module == rel else 0
    return out, inp


def apply_shapes(model: nn.Module, layout: StructuredLayout, adapter: ArchitectureAdapter | None = None) -> None:
    """Resize a freshly built full-size model to recorded per-block widths (weights to be loaded after)."""
    adapter = adapter or get_adapter(model)
    units = block_structures(model, adapter)
    adapter.restore(model)
    experts_path = adapter.structure.experts
    if len(layout) != len(units):
        raise ModelLoadError(f"{ARCHITECTURE_FILE} lists {len(layout)} blocks, the model has {len(units)}")
    for block, u, shape in zip(adapter.blocks(model), units, layout.blocks, strict=True):
        after = BlockLayout(shape.heads, shape.kv_heads, u.layout.head_dim, shape.ffn_width)
        for rel, lin in u.linears.items():
            if adapter.is_expert_layer(rel):
                continue
            rows, cols = _compact_shape(u, rel, lin, after)
            _replace(block, rel, nn.Linear(cols, rows, bias=lin.bias is not None, dtype=lin.weight.dtype))
        if experts_path is not None:
            _resize_experts(block.get_submodule(experts_path), None, shape.ffn_width)
        adapter.set_head_counts(block.get_submodule(u.spec.attention), shape.heads, shape.kv_heads)

