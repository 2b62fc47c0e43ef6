"""Removable structures of a decoder block: FFN neurons (of its MLP or of each expert) and key/value head groups.

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
from llm_surgeon.models.spec import FfnPart


@dataclass
class BlockStructures:
    """Index sets of one block's structures (at the block's full, uncompacted widths).

    Removed FFN neurons are a bool tensor [parts, width]: one row for a dense MLP, one per expert of a
    mixture-of-experts block (equal widths: :attr:`parts` all span ``layout.ffn_width``)."""

    spec: StructureSpec
    layout: BlockLayout
    linears: dict[str, nn.Linear]
    """Every module the structures touch, by path inside the block."""
    parts: tuple[FfnPart, ...]
    """The block's FFNs: its MLP, or each expert."""

    def role_width(self, role: str, layout: BlockLayout | None = None) -> int:
        """Rows (or columns) one member of ``role`` spans: FFN width, query width or key/value width."""
        lay = layout or self.layout
        return {"ffn": lay.ffn_width, "q": lay.heads * lay.head_dim, "kv": lay.kv_heads * lay.head_dim}[role]

    def q_rows(self, group: int) -> torch.Tensor:
        width = self.layout.group_size * self.layout.head_dim
        return torch.arange(group * width, (group + 1) * width)

    def kv_rows(self, group: int) -> torch.Tensor:
        return torch.arange(group * self.layout.head_dim, (group + 1) * self.layout.head_dim)

    def _group_local(self, role: str, groups: torch.Tensor) -> torch.Tensor:
        """Removed indices inside one attention member of ``role`` (``"q"`` or ``"kv"``)."""
        chosen = groups.nonzero().squeeze(1).tolist()
        rows = self.q_rows if role == "q" else self.kv_rows
        return torch.cat([rows(g) for g in chosen]) if chosen else torch.zeros(0, dtype=torch.long)

    def removed_indices(self, neurons: torch.Tensor, groups: torch.Tensor) -> dict[str, tuple[str, torch.Tensor]]:
        """Per module: ("rows" | "cols", indices) implied by the removed neurons ([parts, width]) and groups."""
        out: dict[str, tuple[str, list[torch.Tensor]]] = {}

        def add(kind: str, member: Member, local: torch.Tensor) -> None:
            if member.module in out and out[member.module][0] != kind:
                raise ConfigError(f"structure member {member.module} loses both rows and columns")
            out.setdefault(member.module, (kind, []))[1].append(local + member.offset(self.layout))

        for kind, by_role in (("rows", self.spec.rows()), ("cols", self.spec.columns())):
            for role, members in by_role.items():
                for member in members:
                    add(kind, member, self._group_local(role, groups))
        for part, (ins, out_member) in enumerate(self.parts):
            local = neurons[part].nonzero().squeeze(1)
            for member in ins:
                add("rows", member, local)
            add("cols", out_member, local)
        return {module: (kind, torch.cat(parts)) for module, (kind, parts) in out.items()}

    def column_modules(self) -> set[str]:
        """The modules whose columns the structures own: the output projections (attention's and each FFN's)."""
        return {m.module for members in self.spec.columns().values() for m in members} | {
            out.module for _, out in self.parts}

    def _rows_params(self, member: Member, rows: int) -> int:
        lin = self.linears[member.module]
        return rows * (lin.in_features + (1 if lin.bias is not None else 0))

    def neuron_params(self) -> int:
        """Parameters of one neuron of one FFN part (every part has the same shapes)."""
        ins, out = self.parts[0]
        return sum(self._rows_params(m, 1) for m in ins) + self.linears[out.module].out_features

    def group_params(self) -> int:
        q_width = self.layout.group_size * self.layout.head_dim
        rows = self.spec.rows()
        total = sum(self._rows_params(m, q_width) for m in rows["q"])
        total += sum(self._rows_params(m, self.layout.head_dim) for m in rows["kv"])
        return total + sum(q_width * self.linears[m.module].out_features for m in self.spec.columns()["q"])

    def parameter_count(self) -> int:
        return sum(lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
                   for lin in self.linears.values())


def block_layout(adapter: ArchitectureAdapter, config, block: nn.Module, parts: tuple[FfnPart, ...]) -> BlockLayout:
    """Full widths of ``block``: head counts from the config, FFN width from the (first) down projection."""
    heads, kv_heads, head_dim = adapter.head_layout(config)
    return BlockLayout(heads, kv_heads, head_dim, block.get_submodule(parts[0][1].module).in_features)


def block_structures(model: nn.Module, adapter: ArchitectureAdapter) -> list[BlockStructures]:
    """Every block's structures (prepares a mixture-of-experts model: its experts seen per expert)."""
    if adapter.structure is None:
        raise ConfigError(f"structured pruning is not available for the {adapter.family} family "
                          "(its adapter has no structure description)")
    adapter.prepare(model)
    spec = adapter.structure
    units = []
    for block in adapter.blocks(model):
        experts = adapter.expert_count(block)
        parts = spec.ffn_parts(experts)
        if not parts:
            raise ConfigError(f"structured pruning of {adapter.family} needs experts in every block")
        linears = {rel: block.get_submodule(rel) for rel in spec.modules(experts)}
        units.append(BlockStructures(spec, block_layout(adapter, model.config, block, parts), linears, parts))
    return units


def structure_costs(u: BlockStructures, method, factors_of) -> tuple[torch.Tensor, torch.Tensor]:
    """(neuron costs [parts, width], group costs) of one block under ``method``, in float64.

    ``factors_of(rel)`` gives the layer's factors (float64) or ``None`` for a method without curvature.
    """
    W = {rel: lin.weight.detach().double() for rel, lin in u.linears.items()}
    bias = {rel: (lin.bias.detach().double() if lin.bias is not None else None) for rel, lin in u.linears.items()}
    f = {rel: factors_of(rel) for rel in u.linears}
    width = u.layout.ffn_width

    def span(costs: torch.Tensor, member: Member) -> torch.Tensor:
        start = member.offset(u.layout)
        return costs[start:start + width]

    neurons = []
    for ins, out in u.parts:
        part = sum(span(method.row_costs(W[m.module], bias[m.module], f[m.module]), m) for m in ins)
        neurons.append(part + span(method.column_costs(W[out.module], f[out.module]), out))
    rows, cols = u.spec.rows(), u.spec.columns()
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
    return torch.stack(neurons), torch.stack(groups)


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
    """Per block, which neurons ([parts, width]) and head groups the masks remove (read from the output
    projections' columns)."""
    neurons, groups = [], []
    for b, u in enumerate(units):
        removed = []
        for _, ffn_out in u.parts:
            start = ffn_out.offset(u.layout)
            removed.append(masks[name_of(b, ffn_out.module)].all(0)[start:start + u.layout.ffn_width])
        neurons.append(torch.stack(removed))
        o = u.spec.columns()["q"][0]
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
        layer = {"heads_kept": kept_groups * u.layout.group_size, "kv_heads_kept": kept_groups,
                 "heads_before": u.layout.heads, "ffn_width_kept": int((~n).sum(1).max()),
                 "ffn_width_before": u.layout.ffn_width, "params_before": before, "params_after": after}
        if u.spec.experts is not None:
            layer["experts"] = len(u.parts)  # each keeps ffn_width_kept neurons
        layers.append(layer)
    before = sum(x["params_before"] for x in layers)
    after = sum(x["params_after"] for x in layers)
    return {"layers": layers, "prunable_params_before": before, "prunable_params_after": after,
            "removed_fraction": 1 - after / before}
