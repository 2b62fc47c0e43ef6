"""Unit selectors: what one shot removes — single weights, N:M groups, or whole structures.

The shot loop (:mod:`llm_surgeon.engine.pruner`) is the same for every granularity; it hands the
method's costs to a selector, which turns them into removal masks with one global threshold
(or per layer) and then applies the method's compensation. Everything that differs between
granularities lives here.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch
from torch import nn
from tqdm.auto import tqdm

from llm_surgeon.curvature.placement import EVERY_LAYER_HERE, LayerPlacement, UpdateTotals
from llm_surgeon.engine.structures import (
    block_structures,
    masks_from_state,
    state_from_masks,
    structure_costs,
    structure_summary,
)
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.math.flap import standardized
from llm_surgeon.math.selection import chosen_elements, force_removed
from llm_surgeon.math.streaming_threshold import capped_select_cheapest, streaming_select_cheapest
from llm_surgeon.math.structured import (
    equal_width_slots,
    removable_params,
    remove_cheapest,
    round_kept_counts,
    select_structures,
)
from llm_surgeon.math.threshold import linear_schedule, select_cheapest
from llm_surgeon.models.adapters import ArchitectureAdapter
from llm_surgeon.models.biases import add_to_bias, declare_biases


class UnitSelector(ABC):
    """Chooses and removes the units of one shot for a given method.

    ``placement`` says which layers this process computes; the others' cost inputs and weights arrive
    through it, so every process makes the same selection (one process: every layer is here).
    """

    needs_every_layer: bool = False
    """Whether the selection reads every layer's whole factors (then every rank must hold them all)."""

    def __init__(self, linears: dict[str, nn.Linear]):
        self.linears = linears

    @abstractmethod
    def schedule(self, sparsity: float, shots: int) -> list[float]:
        """The fraction reached after each shot (of weights, groups or parameters)."""

    def target_sparsity(self, fraction: float) -> float:
        """The fraction of zero weights a shot at ``fraction`` aims for."""
        return fraction

    @abstractmethod
    def select(self, method, factors: dict, removed: dict[str, torch.Tensor], fraction: float, label: str = "",
               placement: LayerPlacement = EVERY_LAYER_HERE) -> dict[str, torch.Tensor]:
        """New removal masks (supersets of ``removed``) reaching ``fraction``."""

    def apply(self, method, factors: dict, masks: dict[str, torch.Tensor], label: str, progress: bool,
              placement: LayerPlacement = EVERY_LAYER_HERE) -> UpdateTotals:
        """Zero the removed weights and compensate the rest, layer by layer (the layers placed here; the
        others' new weights arrive from their owners)."""
        totals = UpdateTotals(iterations=[])
        mine = {name: lin for name, lin in self.linears.items() if placement.here(name)}
        for name, lin in tqdm(mine.items(), desc=f"{label}: update", disable=not progress):
            with torch.no_grad():
                new_weight, stats = method.update(lin.weight.detach(), masks[name], factors.get(name))
                lin.weight.copy_(new_weight)
            if stats is not None:
                totals.iterations.append(stats.iterations)
                totals.loss_no_update += stats.loss_no_update
                totals.loss_after += stats.loss_after
        placement.share_weights(self.linears)
        return placement.share_totals(totals)

    def curvature_layers(self, method) -> dict[str, nn.Linear]:
        """The layers whose curvature a shot must collect for ``method`` (every layer, unless the units'
        costs and removals read only some of them)."""
        return self.linears

    def summary(self, masks: dict[str, torch.Tensor]) -> dict | None:
        """What the final masks mean beyond a sparsity (structured: widths kept per block)."""
        return None

    def subset(self, names: list[str], scope: str | None = None) -> UnitSelector:
        """This selector over ``names`` only (and, if given, with another threshold scope)."""
        clone = copy.copy(self)
        clone.linears = {name: self.linears[name] for name in names}
        if scope is not None:
            clone.scope = scope
        return clone

    def without(self, names: list[str], removed: dict[str, torch.Tensor], fraction: float
                ) -> tuple[UnitSelector, float]:
        """This selector over every layer but ``names`` (left as ``removed`` has them), and the fraction the
        others must reach for the whole to reach ``fraction``."""
        raise ConfigError(f"{type(self).__name__} cannot leave {len(names)} layers out of a shot")

    def _cost_inputs(self, method, factors, label: str, progress: bool, placement: LayerPlacement) -> dict:
        """What each layer's element costs read (for LLM Surgeon two vectors, not the inverses), made layer
        by layer so that no two layers' damped factors are alive at once — here for the layers placed
        here, the others' received from their owners."""
        mine = [name for name in self.linears if placement.here(name)]
        local = {name: method.cost_inputs(factors.get(name))
                 for name in tqdm(mine, desc=f"{label}: invert curvature", disable=not progress)}
        return placement.share_cost_inputs(local, lambda name: self.linears[name].weight.device)

    def _forced_costs(self, method, inputs: dict, removed: dict[str, torch.Tensor]):
        """``name -> costs`` with removed weights at ``-inf``, computed afresh on every call (never all kept)."""
        def costs(name: str) -> torch.Tensor:
            return force_removed(method.element_costs(self.linears[name].weight.detach(), inputs[name]), removed[name])

        return costs

    def _cheapest(self, units_of, sizes: list[int], fraction: float, label: str, progress: bool,
                  caps: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Flat masks of the cheapest ``fraction`` of every layer's units (``units_of(name)``: 1-D costs of
        ``sizes[i]`` units), by one global threshold or per layer; the global one streams the layers (three
        passes over their costs a round) instead of holding every layer's costs at once, and takes at most
        ``caps[i]`` units from layer ``i`` when caps are given."""
        names = list(self.linears)
        if self.scope == "layer":
            return {name: select_cheapest([units_of(name)], round(fraction * size))[0]
                    for name, size in zip(tqdm(names, desc=f"{label}: costs", disable=not progress), sizes,
                                          strict=True)}
        bar = tqdm(desc=f"{label}: costs, one global threshold (each layer read 3 times)", total=3 * len(names),
                   disable=not progress)

        def source(i: int) -> torch.Tensor:
            bar.update()
            return units_of(names[i])

        k = round(fraction * sum(sizes))
        if caps is None:
            masks = streaming_select_cheapest(source, sizes, k)
        elif k > sum(caps):
            raise LLMSurgeonError(f"{label}: {fraction:.1%} of these layers cannot be removed with at most "
                                  f"{sum(caps) / sum(sizes):.1%} allowed by --max-layer-sparsity; raise it")
        else:
            masks = capped_select_cheapest(source, sizes, k, caps)
        bar.close()
        return dict(zip(names, masks, strict=True))


class ElementSelector(UnitSelector):
    """Single weights, cheapest first, by one global threshold or per layer."""

    def __init__(self, linears, scope: str = "global", progress: bool = False, max_layer_sparsity: float = 1.0):
        super().__init__(linears)
        self.scope, self.progress, self.max_layer_sparsity = scope, progress, max_layer_sparsity

    def schedule(self, sparsity, shots):
        return linear_schedule(sparsity, shots)

    def _caps(self, removed: dict[str, torch.Tensor]) -> list[int] | None:
        """At most ``max_layer_sparsity`` of each layer (never fewer than it has removed already); None: no cap."""
        if self.max_layer_sparsity >= 1.0:
            return None
        return [max(int(self.max_layer_sparsity * lin.weight.numel()), int(removed[name].sum()))
                for name, lin in self.linears.items()]

    def without(self, names, removed, fraction):
        others = [name for name in self.linears if name not in set(names)]
        total = sum(lin.weight.numel() for lin in self.linears.values())
        fixed = sum(int(removed[name].sum()) for name in names)
        rest = sum(self.linears[name].weight.numel() for name in others)
        needed = (round(fraction * total) - fixed) / rest
        if needed > 1:
            raise LLMSurgeonError(f"{len(names)} experts received no calibration token and stay dense, so the other "
                                  f"layers cannot reach {fraction:.1%} sparsity; use more calibration text or "
                                  "--prune-unrouted")
        return self.subset(others), max(needed, 0.0)

    def select(self, method, factors, removed, fraction, label="", placement=EVERY_LAYER_HERE):
        inputs = self._cost_inputs(method, factors, label, self.progress, placement)
        costs = self._forced_costs(method, inputs, removed)
        sizes = [lin.weight.numel() for lin in self.linears.values()]
        chosen = self._cheapest(lambda name: costs(name).reshape(-1), sizes, fraction, label, self.progress,
                                self._caps(removed))
        return {name: chosen[name].reshape(lin.weight.shape) for name, lin in self.linears.items()}


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

    def without(self, names, removed, fraction):
        """The other layers at the same share of groups: the pattern must hold in every layer, so the layers
        left out must have been brought to this share by other means (the caller's magnitude pass)."""
        others = [name for name in self.linears if name not in set(names)]
        return self.subset(others), fraction

    def select(self, method, factors, removed, fraction, label="", placement=EVERY_LAYER_HERE):
        inputs = self._cost_inputs(method, factors, label, self.progress, placement)

        def choice(name: str) -> tuple[torch.Tensor, torch.Tensor]:  # made afresh on every call, never all kept
            return method.nm_choice(self.linears[name].weight.detach(), inputs[name], removed[name], self.n, self.m)

        sizes = [lin.weight.numel() // self.m for lin in self.linears.values()]
        chosen = self._cheapest(lambda name: choice(name)[0].reshape(-1), sizes, fraction, label, self.progress)
        return {name: chosen_elements(choice(name)[1], chosen[name], removed[name], self.m) for name in self.linears}


class StructureSelector(UnitSelector):
    """Whole FFN neurons and key/value head groups, cheapest per parameter, until a parameter budget.

    The experts of a block keep equally many neurons (one fused tensor); each drops its own cheapest
    (:func:`~llm_surgeon.math.structured.equal_width_slots`). A dense MLP is the case of one part.

    A structure spans several layers of a block and its costs read their whole factors, so every
    process holds every layer's factors and computes every structure (``needs_every_layer``).
    """

    needs_every_layer = True

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter, linears, progress: bool = False,
                 width_multiple: int = 1, max_layer_sparsity: float = 1.0):
        super().__init__(linears)
        self.width_multiple, self.max_layer_sparsity = width_multiple, max_layer_sparsity
        self.model = model
        self.units = block_structures(model, adapter)
        self.name_of = adapter.module_name
        self.total = sum(u.parameter_count() for u in self.units)
        self.progress = progress

    def schedule(self, sparsity, shots):
        return linear_schedule(sparsity, shots)

    def curvature_layers(self, method):
        """Every layer, or, when ``method`` prices and removes a structure by its output columns alone, the
        output projections (``o_proj``, ``down_proj``): the q/k/v and gate/up rows go free with them."""
        if method.reads_row_factors():
            return self.linears
        names = {self.name_of(b, rel) for b, u in enumerate(self.units) for rel in u.column_modules()}
        return {name: lin for name, lin in self.linears.items() if name in names}

    def _factors_of(self, factors: dict, block: int, dtype: torch.dtype | None):
        def lookup(rel: str):
            f = factors.get(self.name_of(block, rel))
            return f if f is None or dtype is None else f.to(dtype)

        return lookup

    def select(self, method, factors, removed, fraction, label="", placement=EVERY_LAYER_HERE):
        _every_layer_here(placement)
        neurons, groups = state_from_masks(self.units, self.name_of, removed)
        costs, params, already, neuron_costs = [], [], [], []
        standardize = method.structure_ranking == "standardized"
        for b, u in enumerate(tqdm(self.units, desc=f"{label}: costs", disable=not self.progress)):
            n_cost, g_cost = structure_costs(u, method, self._factors_of(factors, b, torch.float64))
            if standardize:  # each block's scores per kind, comparable across blocks (FLAP)
                n_cost = standardized(n_cost.cpu(), neurons[b].cpu())
                g_cost = standardized(g_cost.cpu(), groups[b].cpu())
            neuron_costs.append(n_cost.cpu())  # blocks may sit on several devices: chosen on the host
            slot_cost, slot_removed = equal_width_slots(n_cost.cpu(), neurons[b].cpu())
            costs += [slot_cost, g_cost.cpu()]
            params += [torch.full((u.layout.ffn_width,), float(len(u.parts) * u.neuron_params())),
                       torch.full((u.layout.kv_heads,), float(u.group_params()))]
            already += [slot_removed, groups[b].cpu()]
        target = round(fraction * self.total)
        caps = self._caps(costs)
        if caps is not None and target > removable_params(costs, params, already, caps):
            raise LLMSurgeonError(f"{label}: {fraction:.1%} of the parameters cannot be removed when no block "
                                  f"loses more than {self.max_layer_sparsity:.0%} of its FFN neurons or of its "
                                  "head groups (--max-layer-sparsity); raise it")
        chosen = select_structures(costs, params, already, target, per_parameter=not standardize, caps=caps)
        if self.width_multiple > 1:  # FFN neuron groups are the even ones; heads keep their counts
            ffn = [i % 2 == 0 for i in range(len(costs))]
            chosen = round_kept_counts(costs, params, already, chosen, self.width_multiple, target, ffn)
        new_neurons = [remove_cheapest(c, n.cpu(), int(slots.sum()))
                       for c, n, slots in zip(neuron_costs, neurons, chosen[0::2], strict=True)]
        return {**removed, **masks_from_state(self.units, self.name_of, new_neurons, chosen[1::2])}

    def _caps(self, costs: list[torch.Tensor]) -> list[int] | None:
        """At most ``max_layer_sparsity`` of every block's FFN neurons and of its head groups; None: no cap."""
        if self.max_layer_sparsity >= 1.0:
            return None
        return [int(self.max_layer_sparsity * c.numel()) for c in costs]

    def apply(self, method, factors, masks, label, progress, placement=EVERY_LAYER_HERE):
        _every_layer_here(placement)
        neurons, groups = state_from_masks(self.units, self.name_of, masks)
        shifted = False
        for b, u in enumerate(tqdm(self.units, desc=f"{label}: update", disable=not progress)):
            lookup = self._factors_of(factors, b, None)
            for rel, (kind, idx) in u.removed_indices(neurons[b], groups[b]).items():
                lin = u.linears[rel]
                W, f = lin.weight.detach(), lookup(rel)
                shift = method.column_bias_shift(W, idx, f) if kind == "cols" else None
                new = method.remove_rows(W, idx, f) if kind == "rows" else method.remove_columns(W, idx, f)
                with torch.no_grad():
                    lin.weight.copy_(new)
                    if kind == "rows" and lin.bias is not None:
                        lin.bias[idx] = 0
                if shift is not None:
                    add_to_bias(lin, shift)
                    shifted = True
        if shifted:
            declare_biases(self.model)
        return UpdateTotals(iterations=[])

    def summary(self, masks):
        return structure_summary(self.units, *state_from_masks(self.units, self.name_of, masks))


def _every_layer_here(placement: LayerPlacement) -> None:
    if not placement.every_layer_here:
        raise ValueError("structured selection needs every layer's factors on every rank (use a replicating "
                         "collector, not layer owners)")


def make_selector(granularity: str, nm: tuple[int, int] | None, scope: str, model: nn.Module,
                  adapter: ArchitectureAdapter, linears: dict[str, nn.Linear], progress: bool,
                  width_multiple: int = 1, max_layer_sparsity: float = 1.0) -> UnitSelector:
    """The selector for a granularity: ``unstructured``, ``structured``, or an N:M pattern."""
    if nm is not None:
        return NMSelector(linears, *nm, scope=scope, progress=progress)
    if granularity == "structured":
        return StructureSelector(model, adapter, linears, progress=progress, width_multiple=width_multiple,
                                 max_layer_sparsity=max_layer_sparsity)
    return ElementSelector(linears, scope=scope, progress=progress, max_layer_sparsity=max_layer_sparsity)
