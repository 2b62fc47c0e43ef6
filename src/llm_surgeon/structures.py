"""Removable structures of a decoder block: FFN neurons and key/value head groups.

Plumbing between an adapter's :class:`~llm_surgeon.models.adapters.StructureSpec` and the
pure row/column math: which rows and columns (of plain or fused matrices) one structure
owns, what it costs under a method, and the masks that removing it implies. Used by the
structured unit selector of the shot loop and by compaction; knows nothing of either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llm_surgeon.errors import ConfigError
from llm_surgeon.models.adapters import ArchitectureAdapter, BlockLayout, Member, StructureSpec


@dataclass
class BlockStructures:
    """Index sets of one block's structures (at the block's full, uncompacted widths)."""

    spec: StructureSpec
    layout: BlockLayout
    linears: dict[str, nn.Linear]
    """Every module the structures touch, by path inside the block."""

    def role_width(self, role: str, layout: BlockLayout | None = None) -> int:
        """Rows (or columns) one member of ``role`` spans: FFN width, query width or key/value width."""
        lay = layout or self.layout
        return {"ffn": lay.ffn_width, "q": lay.heads * lay.head_dim, "kv": lay.kv_heads * lay.head_dim}[role]

    def q_rows(self, group: int) -> torch.Tensor:
        width = self.layout.group_size * self.layout.head_dim
        return torch.arange(group * width, (group + 1) * width)

    def kv_rows(self, group: int) -> torch.Tensor:
        return torch.arange(group * self.layout.head_dim, (group + 1) * self.layout.head_dim)

    def _local(self, role: str, neurons: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Removed indices inside one member of ``role``."""
        if role == "ffn":
            return neurons.nonzero().squeeze(1)
        chosen = groups.nonzero().squeeze(1).tolist()
        rows = self.q_rows if role == "q" else self.kv_rows
        return torch.cat([rows(g) for g in chosen]) if chosen else torch.zeros(0, dtype=torch.long)

    def removed_indices(self, neurons: torch.Tensor, groups: torch.Tensor) -> dict[str, tuple[str, torch.Tensor]]:
        """Per module: ("rows" | "cols", indices) implied by the removed neurons and groups."""
        out: dict[str, tuple[str, list[torch.Tensor]]] = {}
        for kind, by_role in (("rows", self.spec.rows()), ("cols", self.spec.columns())):
            for role, members in by_role.items():
                local = self._local(role, neurons, groups)
                for member in members:
                    if member.module in out and out[member.module][0] != kind:
                        raise ConfigError(f"structure member {member.module} loses both rows and columns")
                    out.setdefault(member.module, (kind, []))[1].append(local + member.offset(self.layout))
        return {module: (kind, torch.cat(parts)) for module, (kind, parts) in out.items()}

    def _rows_params(self, member: Member, rows: int) -> int:
        lin = self.linears[member.module]
        return rows * (lin.in_features + (1 if lin.bias is not None else 0))

    def neuron_params(self) -> int:
        ins = sum(self._rows_params(m, 1) for m in self.spec.rows()["ffn"])
        return ins + sum(self.linears[m.module].out_features for m in self.spec.columns()["ffn"])

    def group_params(self) -> int:
        q_width = self.layout.group_size * self.layout.head_dim
        rows = self.spec.rows()
        total = sum(self._rows_params(m, q_width) for m in rows["q"])
        total += sum(self._rows_params(m, self.layout.head_dim) for m in rows["kv"])
        return total + sum(q_width * self.linears[m.module].out_features for m in self.spec.columns()["q"])

    def parameter_count(self) -> int:
        return sum(lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
                   for lin in self.linears.values())


def block_layout(adapter: ArchitectureAdapter, config, block: nn.Module) -> BlockLayout:
    """Full widths of ``block``: head counts from the config, FFN width from the down projection."""
    heads, kv_heads, head_dim = adapter.head_layout(config)
    ffn_out = adapter.structure.columns()["ffn"][0]
    return BlockLayout(heads, kv_heads, head_dim, block.get_submodule(ffn_out.module).in_features)


def block_structures(model: nn.Module, adapter: ArchitectureAdapter) -> list[BlockStructures]:
    if adapter.structure is None:
        raise ConfigError(f"structured pruning is not available for the {adapter.family} family "
                          "(its adapter has no structure description)")
    spec = adapter.structure
    units = []
    for block in adapter.blocks(model):
        linears = {rel: block.get_submodule(rel) for rel in spec.modules()}
        units.append(BlockStructures(spec, block_layout(adapter, model.config, block), linears))
    return units


def structure_costs(u: BlockStructures, method, factors_of) -> tuple[torch.Tensor, torch.Tensor]:
    """(neuron costs, group costs) of one block under ``method``, in float64.

    ``factors_of(rel)`` gives the layer's factors (float64) or ``None`` for a method without curvature.
    """
    W = {rel: lin.weight.detach().double() for rel, lin in u.linears.items()}
    bias = {rel: (lin.bias.detach().double() if lin.bias is not None else None) for rel, lin in u.linears.items()}
    f = {rel: factors_of(rel) for rel in u.linears}
    width = u.layout.ffn_width

    def span(costs: torch.Tensor, member: Member) -> torch.Tensor:
        start = member.offset(u.layout)
        return costs[start:start + width]

    rows, cols = u.spec.rows(), u.spec.columns()
    neurons = sum(span(method.row_costs(W[m.module], bias[m.module], f[m.module]), m) for m in rows["ffn"])
    for m in cols["ffn"]:
        neurons = neurons + span(method.column_costs(W[m.module], f[m.module]), m)
    groups = []
    for g in range(u.layout.kv_heads):
        parts = [method.row_set_cost(W[m.module], u.q_rows(g) + m.offset(u.layout), f[m.module]) for m in rows["q"]]
        parts += [method.row_set_cost(W[m.module], u.kv_rows(g) + m.offset(u.layout), f[m.module])
                  for m in rows["kv"]]
        parts += [method.column_set_cost(W[m.module], u.q_rows(g) + m.offset(u.layout), f[m.module])
                  for m in cols["q"]]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        groups.append(total)
    return neurons, torch.stack(groups)


def masks_from_state(units: list[BlockStructures], name_of, neurons, groups) -> dict[str, torch.Tensor]:
    """Removal masks of every touched module from per-block removed neurons and groups."""
    masks = {}
    for b, u in enumerate(units):
        for rel, (kind, idx) in u.removed_indices(neurons[b], groups[b]).items():
            m = torch.zeros_like(u.linears[rel].weight, dtype=torch.bool)
            if kind == "rows":
                m[idx] = True
            else:
                m[:, idx] = True
            masks[name_of(b, rel)] = m
    return masks


def state_from_masks(units: list[BlockStructures], name_of, masks) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per block, which neurons and head groups the masks remove (read from the output projections' columns)."""
    neurons, groups = [], []
    for b, u in enumerate(units):
        ffn_out, o = u.spec.columns()["ffn"][0], u.spec.columns()["q"][0]
        start = ffn_out.offset(u.layout)
        neurons.append(masks[name_of(b, ffn_out.module)].all(0)[start:start + u.layout.ffn_width])
        o_start = o.offset(u.layout)
        o_mask = masks[name_of(b, o.module)].all(0)
        groups.append(torch.stack([o_mask[u.q_rows(g) + o_start].all() for g in range(u.layout.kv_heads)]))
    return neurons, groups


def structure_summary(units: list[BlockStructures], neurons, groups) -> dict:
    """Per block the heads and FFN width kept and the parameters before and after."""
    layers = []
    for u, n, g in zip(units, neurons, groups, strict=True):
        kept_groups = int((~g).sum())
        before = u.parameter_count()
        after = before - int(n.sum()) * u.neuron_params() - int(g.sum()) * u.group_params()
        layers.append({"heads_kept": kept_groups * u.layout.group_size, "kv_heads_kept": kept_groups,
                       "heads_before": u.layout.heads, "ffn_width_kept": int((~n).sum()),
                       "ffn_width_before": u.layout.ffn_width, "params_before": before, "params_after": after})
    before = sum(x["params_before"] for x in layers)
    after = sum(x["params_after"] for x in layers)
    return {"layers": layers, "prunable_params_before": before, "prunable_params_after": after,
            "removed_fraction": 1 - after / before}
