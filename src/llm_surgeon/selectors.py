"""Unit selectors: what one shot removes — single weights, N:M groups, or whole structures.

The shot loop (:mod:`llm_surgeon.pruner`) is the same for every granularity; it hands the
method's costs to a selector, which turns them into removal masks with one global threshold
(or per layer) and then applies the method's compensation. Everything that differs between
granularities lives here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from llm_surgeon.errors import ConfigError
from llm_surgeon.math.selection import select_nm, select_unstructured
from llm_surgeon.math.structured import select_structures
from llm_surgeon.math.threshold import linear_schedule
from llm_surgeon.models.adapters import ArchitectureAdapter
from llm_surgeon.structures import (
    block_structures,
    masks_from_state,
    state_from_masks,
    structure_costs,
    structure_summary,
)


@dataclass
class UpdateTotals:
    """What the compensation of one shot achieved, summed over layers."""

    iterations: list[int]
    loss_no_update: float = 0.0
    loss_after: float = 0.0


class UnitSelector(ABC):
    """Chooses and removes the units of one shot for a given method."""

    def __init__(self, linears: dict[str, nn.Linear]):
        self.linears = linears

    @abstractmethod
    def schedule(self, sparsity: float, shots: int) -> list[float]:
        """The fraction reached after each shot (of weights, groups or parameters)."""

    def target_sparsity(self, fraction: float) -> float:
        """The fraction of zero weights a shot at ``fraction`` aims for."""
        return fraction

    @abstractmethod
    def select(self, method, factors: dict, removed: dict[str, torch.Tensor], fraction: float, label: str = ""
               ) -> dict[str, torch.Tensor]:
        """New removal masks (supersets of ``removed``) reaching ``fraction``."""

    def apply(self, method, factors: dict, masks: dict[str, torch.Tensor], label: str, progress: bool
              ) -> UpdateTotals:
        """Zero the removed weights and compensate the rest, layer by layer."""
        totals = UpdateTotals(iterations=[])
        for name, lin in tqdm(self.linears.items(), desc=f"{label}: update", disable=not progress):
            with torch.no_grad():
                new_weight, stats = method.update(lin.weight.detach(), masks[name], factors.get(name))
                lin.weight.copy_(new_weight)
            if stats is not None:
                totals.iterations.append(stats.iterations)
                totals.loss_no_update += stats.loss_no_update
                totals.loss_after += stats.loss_after
        return totals

    def summary(self, masks: dict[str, torch.Tensor]) -> dict | None:
        """What the final masks mean beyond a sparsity (structured: widths kept per block)."""
        return None

    def _costs(self, method, factors: dict, label: str, progress: bool) -> dict[str, torch.Tensor]:
        return {name: method.element_costs(lin.weight.detach(), factors.get(name))
                for name, lin in tqdm(self.linears.items(), desc=f"{label}: costs", disable=not progress)}


class ElementSelector(UnitSelector):
    """Single weights, cheapest first, by one global threshold or per layer."""

    def __init__(self, linears, scope: str = "global", progress: bool = False):
        super().__init__(linears)
        self.scope, self.progress = scope, progress

    def schedule(self, sparsity, shots):
        return linear_schedule(sparsity, shots)

    def select(self, method, factors, removed, fraction, label=""):
        return select_unstructured(self._costs(method, factors, label, self.progress), removed, fraction, self.scope)


class NMSelector(UnitSelector):
    """Groups of ``m`` consecutive inputs of a row brought into N:M form; a growing share of groups per shot."""

    def __init__(self, linears, n: int, m: int, scope: str = "global", progress: bool = False):
        super().__init__(linears)
        for name, lin in linears.items():
            if lin.in_features % m:
                raise ConfigError(f"N:M pattern needs input widths divisible by {m}; layer {name} has "
                                  f"{lin.in_features} inputs")
        self.n, self.m, self.scope, self.progress = n, m, scope, progress

    def schedule(self, sparsity, shots):
        return linear_schedule(1.0, shots)

    def target_sparsity(self, fraction):
        return fraction * self.n / self.m

    def select(self, method, factors, removed, fraction, label=""):
        costs = self._costs(method, factors, label, self.progress)
        return select_nm(costs, removed, self.n, self.m, fraction, self.scope)


class StructureSelector(UnitSelector):
    """Whole FFN neurons and key/value head groups, cheapest per parameter, until a parameter budget."""

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter, linears, progress: bool = False):
        super().__init__(linears)
        self.units = block_structures(model, adapter)
        self.name_of = adapter.module_name
        self.total = sum(u.parameter_count() for u in self.units)
        self.progress = progress

    def schedule(self, sparsity, shots):
        return linear_schedule(sparsity, shots)

    def _factors_of(self, factors: dict, block: int, dtype: torch.dtype | None):
        def lookup(rel: str):
            f = factors.get(self.name_of(block, rel))
            return f if f is None or dtype is None else f.to(dtype)

        return lookup

    def select(self, method, factors, removed, fraction, label=""):
        neurons, groups = state_from_masks(self.units, self.name_of, removed)
        costs, params, already = [], [], []
        for b, u in enumerate(tqdm(self.units, desc=f"{label}: costs", disable=not self.progress)):
            n_cost, g_cost = structure_costs(u, method, self._factors_of(factors, b, torch.float64))
            costs += [n_cost, g_cost]
            params += [torch.full((u.layout.ffn_width,), float(u.neuron_params())),
                       torch.full((u.layout.kv_heads,), float(u.group_params()))]
            already += [neurons[b], groups[b]]
        chosen = select_structures(costs, params, already, round(fraction * self.total))
        return {**removed, **masks_from_state(self.units, self.name_of, chosen[0::2], chosen[1::2])}

    def apply(self, method, factors, masks, label, progress):
        neurons, groups = state_from_masks(self.units, self.name_of, masks)
        for b, u in enumerate(tqdm(self.units, desc=f"{label}: update", disable=not progress)):
            lookup = self._factors_of(factors, b, None)
            for rel, (kind, idx) in u.removed_indices(neurons[b], groups[b]).items():
                lin = u.linears[rel]
                W, f = lin.weight.detach(), lookup(rel)
                new = method.remove_rows(W, idx, f) if kind == "rows" else method.remove_columns(W, idx, f)
                with torch.no_grad():
                    lin.weight.copy_(new)
                    if kind == "rows" and lin.bias is not None:
                        lin.bias[idx] = 0
        return UpdateTotals(iterations=[])

    def summary(self, masks):
        return structure_summary(self.units, *state_from_masks(self.units, self.name_of, masks))


def make_selector(granularity: str, nm: tuple[int, int] | None, scope: str, model: nn.Module,
                  adapter: ArchitectureAdapter, linears: dict[str, nn.Linear], progress: bool) -> UnitSelector:
    """The selector for a granularity: ``unstructured``, ``structured``, or an N:M pattern."""
    if nm is not None:
        return NMSelector(linears, *nm, scope=scope, progress=progress)
    if granularity == "structured":
        return StructureSelector(model, adapter, linears, progress=progress)
    return ElementSelector(linears, scope=scope, progress=progress)
