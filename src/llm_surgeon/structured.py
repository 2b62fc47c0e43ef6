"""Structured pruning: FFN neurons and attention head groups that can be taken out of the network.

Plumbing around :mod:`llm_surgeon.math.structured`: which rows and columns form a
structure (from the adapter's :class:`~llm_surgeon.models.adapters.StructureSpec`), the
multi-shot loop, compaction into smaller Linear layers, and saving/loading models whose
blocks have different widths.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from llm_surgeon.config import PruneConfig
from llm_surgeon.curvature import collect_kronecker_factors
from llm_surgeon.errors import ConfigError, ModelLoadError
from llm_surgeon.math.structured import (
    column_costs,
    column_set_cost,
    remove_columns,
    remove_rows,
    row_costs,
    row_set_cost,
    select_structures,
)
from llm_surgeon.math.threshold import linear_schedule
from llm_surgeon.models.adapters import ArchitectureAdapter, StructureSpec, get_adapter

ARCHITECTURE_FILE = "pruned_architecture.json"


@dataclass
class BlockUnits:
    """Index sets of one block's structures."""

    spec: StructureSpec
    linears: dict[str, nn.Linear]
    ffn_width: int
    group_size: int
    head_dim: int
    kv_heads: int

    def q_rows(self, group: int) -> torch.Tensor:
        width = self.group_size * self.head_dim
        return torch.arange(group * width, (group + 1) * width)

    def kv_rows(self, group: int) -> torch.Tensor:
        return torch.arange(group * self.head_dim, (group + 1) * self.head_dim)

    def _rows_params(self, name: str, rows: int) -> int:
        lin = self.linears[name]
        return rows * (lin.in_features + (1 if lin.bias is not None else 0))

    def neuron_params(self) -> int:
        ins = sum(self._rows_params(n, 1) for n in self.spec.ffn_in)
        return ins + self.linears[self.spec.ffn_out].out_features

    def group_params(self) -> int:
        s = self.spec
        q = self._rows_params(s.q, self.group_size * self.head_dim)
        kv = self._rows_params(s.k, self.head_dim) + self._rows_params(s.v, self.head_dim)
        return q + kv + self.group_size * self.head_dim * self.linears[s.o].out_features


def block_units(model: nn.Module, adapter: ArchitectureAdapter) -> list[BlockUnits]:
    if adapter.structure is None:
        raise ConfigError(f"structured pruning is not available for the {adapter.family} family")
    heads, kv_heads, head_dim = adapter.head_layout(model.config)
    spec = adapter.structure
    units = []
    for block in adapter.blocks(model):
        names = (spec.q, spec.k, spec.v, spec.o, *spec.ffn_in, spec.ffn_out)
        linears = {n: block.get_submodule(n) for n in names}
        units.append(BlockUnits(spec, linears, linears[spec.ffn_out].in_features, heads // kv_heads, head_dim,
                                kv_heads))
    return units


def _structure_costs(u: BlockUnits, name_of, factors, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(neuron costs, group costs) of one block; surgeon: OBS costs; magnitude: squared L2 norm."""
    s = u.spec
    W = {n: lin.weight.detach().double() for n, lin in u.linears.items()}
    if method == "magnitude":
        bias_sq = {n: (lin.bias.detach().double() ** 2 if lin.bias is not None else None)
                   for n, lin in u.linears.items()}
        neurons = sum(W[n].pow(2).sum(1) + (bias_sq[n] if bias_sq[n] is not None else 0) for n in s.ffn_in)
        neurons = neurons + W[s.ffn_out].pow(2).sum(0)
        groups = []
        for g in range(u.kv_heads):
            q, kv = u.q_rows(g), u.kv_rows(g)
            total = W[s.q][q].pow(2).sum() + W[s.k][kv].pow(2).sum() + W[s.v][kv].pow(2).sum()
            total = total + W[s.o][:, q].pow(2).sum()
            groups.append(total)
        return neurons, torch.stack(groups)
    f = {n: factors[name_of(n)] for n in u.linears}
    d = {n: (f[n].G.double(), f[n].A.double(), f[n].G_inv.double(), f[n].A_inv.double()) for n in u.linears}
    neurons = sum(row_costs(W[n], d[n][1], d[n][2]) for n in s.ffn_in)
    neurons = neurons + column_costs(W[s.ffn_out], d[s.ffn_out][0], d[s.ffn_out][3])
    groups = []
    for g in range(u.kv_heads):
        q, kv = u.q_rows(g), u.kv_rows(g)
        total = row_set_cost(W[s.q], q, d[s.q][1], d[s.q][2])
        total = total + row_set_cost(W[s.k], kv, d[s.k][1], d[s.k][2])
        total = total + row_set_cost(W[s.v], kv, d[s.v][1], d[s.v][2])
        total = total + column_set_cost(W[s.o], q, d[s.o][0], d[s.o][3])
        groups.append(total)
    return neurons, torch.stack(groups)


def removed_indices(u: BlockUnits, neurons: torch.Tensor, groups: torch.Tensor) -> dict[str, tuple[str, torch.Tensor]]:
    """Per matrix: ("rows" | "cols", indices) implied by the removed neurons and groups."""
    s = u.spec
    gidx = groups.nonzero().squeeze(1).tolist()
    q = torch.cat([u.q_rows(g) for g in gidx]) if gidx else torch.zeros(0, dtype=torch.long)
    kv = torch.cat([u.kv_rows(g) for g in gidx]) if gidx else torch.zeros(0, dtype=torch.long)
    nidx = neurons.nonzero().squeeze(1)
    out = {n: ("rows", nidx) for n in s.ffn_in}
    out.update({s.ffn_out: ("cols", nidx), s.q: ("rows", q), s.k: ("rows", kv), s.v: ("rows", kv),
                s.o: ("cols", q)})
    return out


def _apply_removal(u: BlockUnits, name_of, factors, neurons, groups, update: bool) -> None:
    for n, (kind, idx) in removed_indices(u, neurons, groups).items():
        lin = u.linears[n]
        W = lin.weight.detach()
        if update and factors is not None:
            f = factors[name_of(n)]
            new = remove_rows(W, idx, f.G_inv) if kind == "rows" else remove_columns(W, idx, f.A_inv)
        else:
            new = W.clone()
            if kind == "rows":
                new[idx] = 0
            else:
                new[:, idx] = 0
        with torch.no_grad():
            lin.weight.copy_(new)
            if kind == "rows" and lin.bias is not None:
                lin.bias[idx] = 0


def masks_from_state(units: list[BlockUnits], name_of, neurons, groups) -> dict[str, torch.Tensor]:
    masks = {}
    for b, u in enumerate(units):
        for n, (kind, idx) in removed_indices(u, neurons[b], groups[b]).items():
            m = torch.zeros_like(u.linears[n].weight, dtype=torch.bool)
            if kind == "rows":
                m[idx] = True
            else:
                m[:, idx] = True
            masks[name_of(b, n)] = m
    return masks


def state_from_masks(units: list[BlockUnits], name_of, masks) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    neurons, groups = [], []
    for b, u in enumerate(units):
        neurons.append(masks[name_of(b, u.spec.ffn_out)].all(0))
        o_mask = masks[name_of(b, u.spec.o)].all(0)
        groups.append(torch.stack([o_mask[u.q_rows(g)].all() for g in range(u.kv_heads)]))
    return neurons, groups


def prunable_parameter_count(units: list[BlockUnits]) -> int:
    return sum(lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
               for u in units for lin in u.linears.values())


def prune_structured(model, calibration, config: PruneConfig, result, progress: bool, on_shot_end) -> None:
    """The multi-shot loop for ``granularity="structured"``; fills ``result`` in place."""
    from llm_surgeon.pruner import ShotRecord, end_shot, prepare_shot_factors, sparsity_stats

    adapter = get_adapter(model)
    units = block_units(model, adapter)
    all_linears = adapter.prunable_linears(model)
    name_of = adapter.module_name

    neurons, groups = state_from_masks(units, name_of, result.masks)
    total = prunable_parameter_count(units)
    schedule = linear_schedule(config.sparsity, config.shots)
    for shot in range(len(result.shots), config.shots):
        t0 = time.perf_counter()
        factors = None
        if config.method == "surgeon":
            raw = collect_kronecker_factors(model, all_linears, calibration, batch_size=config.batch_size,
                                            fisher=config.fisher, seed=config.seed + shot, progress=progress)
            factors = prepare_shot_factors(raw, config, progress)
            del raw
        t1 = time.perf_counter()
        costs, params, removed = [], [], []
        for b, u in enumerate(units):
            n_cost, g_cost = _structure_costs(u, lambda rel, b=b: name_of(b, rel), factors, config.method)
            costs += [n_cost, g_cost]
            params += [torch.full((u.ffn_width,), float(u.neuron_params())),
                       torch.full((u.kv_heads,), float(u.group_params()))]
            removed += [neurons[b], groups[b]]
        chosen = select_structures(costs, params, removed, round(schedule[shot] * total))
        neurons, groups = chosen[0::2], chosen[1::2]
        t2 = time.perf_counter()
        for b, u in enumerate(tqdm(units, desc=f"shot {shot + 1}/{config.shots}: update", disable=not progress)):
            _apply_removal(u, lambda rel, b=b: name_of(b, rel), factors, neurons[b], groups[b],
                           update=config.method == "surgeon")
        t3 = time.perf_counter()
        del factors
        result.masks = masks_from_state(units, name_of, neurons, groups)
        achieved, _ = sparsity_stats(all_linears)
        result.shots.append(ShotRecord(shot=shot + 1, target_sparsity=schedule[shot], achieved_sparsity=achieved,
                                       seconds_curvature=t1 - t0, seconds_costs=t2 - t1, seconds_update=t3 - t2))
        end_shot(model, all_linears, calibration, result, progress, on_shot_end)
    result.structure = structure_summary(units, neurons, groups)


def structure_summary(units: list[BlockUnits], neurons, groups) -> dict:
    layers = []
    for u, n, g in zip(units, neurons, groups, strict=True):
        kept_groups = int((~g).sum())
        before = sum(lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
                     for lin in u.linears.values())
        after = before - int(n.sum()) * u.neuron_params() - int(g.sum()) * u.group_params()
        layers.append({"heads_kept": kept_groups * u.group_size, "kv_heads_kept": kept_groups,
                       "heads_before": u.kv_heads * u.group_size, "ffn_width_kept": int((~n).sum()),
                       "ffn_width_before": u.ffn_width, "params_before": before, "params_after": after})
    before = sum(x["params_before"] for x in layers)
    after = sum(x["params_after"] for x in layers)
    return {"layers": layers, "prunable_params_before": before, "prunable_params_after": after,
            "removed_fraction": 1 - after / before}


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


def compact(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[dict]:
    """Replace pruned Linear layers by smaller ones; return the per-block shapes for saving."""
    adapter = get_adapter(model)
    units = block_units(model, adapter)
    s = adapter.structure
    name_of = adapter.module_name

    neurons, groups = state_from_masks(units, name_of, masks)
    shapes = []
    for b, (block, u) in enumerate(zip(adapter.blocks(model), units, strict=True)):
        kept_n = (~neurons[b]).nonzero().squeeze(1)
        kept_g = (~groups[b]).nonzero().squeeze(1).tolist()
        q = torch.cat([u.q_rows(g) for g in kept_g])
        kv = torch.cat([u.kv_rows(g) for g in kept_g])
        for n in s.ffn_in:
            _replace(block, n, _sliced_linear(u.linears[n], kept_n, None))
        _replace(block, s.ffn_out, _sliced_linear(u.linears[s.ffn_out], None, kept_n))
        _replace(block, s.q, _sliced_linear(u.linears[s.q], q, None))
        _replace(block, s.k, _sliced_linear(u.linears[s.k], kv, None))
        _replace(block, s.v, _sliced_linear(u.linears[s.v], kv, None))
        _replace(block, s.o, _sliced_linear(u.linears[s.o], None, q))
        heads = len(kept_g) * u.group_size
        _set_head_counts(block.get_submodule(s.attention), s, heads)
        shapes.append({"ffn_width": int(kept_n.numel()), "heads": heads, "kv_heads": len(kept_g)})
    return shapes


def _set_head_counts(attention: nn.Module, spec: StructureSpec, heads: int) -> None:
    for attr in spec.head_count_attrs:
        setattr(attention, attr, heads)


def apply_shapes(model: nn.Module, shapes: list[dict]) -> None:
    """Resize a freshly built full-size model to recorded per-block widths (weights to be loaded after)."""
    adapter = get_adapter(model)
    s = adapter.structure
    units = block_units(model, adapter)
    if len(shapes) != len(units):
        raise ModelLoadError(f"{ARCHITECTURE_FILE} lists {len(shapes)} blocks, the model has {len(units)}")
    for block, u, shape in zip(adapter.blocks(model), units, shapes, strict=True):
        q_width = shape["heads"] * u.head_dim
        kv_width = shape["kv_heads"] * u.head_dim
        resized = {n: (shape["ffn_width"], None) for n in s.ffn_in}
        resized.update({s.ffn_out: (None, shape["ffn_width"]), s.q: (q_width, None), s.k: (kv_width, None),
                        s.v: (kv_width, None), s.o: (None, q_width)})
        for n, (rows, cols) in resized.items():
            lin = u.linears[n]
            _replace(block, n, nn.Linear(cols or lin.in_features, rows or lin.out_features, bias=lin.bias is not None,
                                         dtype=lin.weight.dtype))
        _set_head_counts(block.get_submodule(s.attention), s, shape["heads"])


def save_architecture(folder: Path, shapes: list[dict]) -> None:
    from llm_surgeon.io import atomic_write_json

    atomic_write_json(folder / ARCHITECTURE_FILE, {"format": 1, "blocks": shapes})


def load_pruned(folder: str | Path, dtype: torch.dtype = torch.float32):
    """Load a structurally pruned model (per-block widths) as a standard ``PreTrainedModel``."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    arch_file = folder / ARCHITECTURE_FILE
    if not arch_file.is_file():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    shapes = json.loads(arch_file.read_text())["blocks"]
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    apply_shapes(model, shapes)
    state = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no safetensors weights in {folder}")
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as exc:
            raise ModelLoadError(f"cannot read {file}: {exc}") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ModelLoadError(f"weights in {folder} do not match {ARCHITECTURE_FILE}: "
                             f"missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    model.eval()
    return model
