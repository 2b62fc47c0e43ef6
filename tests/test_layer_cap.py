"""--max-layer-sparsity: the global threshold with a ceiling per layer (the selection, a run, bad input)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_surgeon import PruneConfig, prune
from llm_surgeon.engine.selectors import ElementSelector
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.math.structured import removable_count, removable_params, select_structures
from llm_surgeon.methods import MagnitudePruning
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import tiny_llama


def _layer_sparsity(model) -> dict[str, float]:
    linears = get_adapter(model).prunable_linears(model)
    return {name: float((lin.weight == 0).float().mean()) for name, lin in linears.items()}


def test_the_selector_keeps_every_layer_under_its_cap_and_takes_the_cheapest_rest():
    torch.manual_seed(0)
    linears = {f"layer{i}": nn.Linear(16, 8) for i in range(3)}
    with torch.no_grad():
        linears["layer0"].weight.mul_(0.01)  # by magnitude alone layer0 would be emptied first
    removed = {name: torch.zeros_like(lin.weight, dtype=torch.bool) for name, lin in linears.items()}
    removed["layer2"][0, :12] = True  # already removed: kept removed, counted within the cap
    got = ElementSelector(linears, max_layer_sparsity=0.6).select(MagnitudePruning(), {}, removed, 0.5)
    sizes = {name: lin.weight.numel() for name, lin in linears.items()}
    assert sum(int(m.sum()) for m in got.values()) == round(0.5 * sum(sizes.values()))
    assert int(got["layer0"].sum()) == int(0.6 * sizes["layer0"])  # full: the cap binds
    assert torch.all(got["layer2"][removed["layer2"]])
    for name, lin in linears.items():  # inside each layer, the chosen are its cheapest
        chosen, costs = got[name], lin.weight.detach().abs().masked_fill(removed[name], -1.0)
        assert costs[chosen].max() <= costs[~chosen].min()
    free = [n for n in linears if n != "layer0"]  # across the layers left free, one threshold
    assert max(linears[n].weight.abs()[got[n] & ~removed[n]].max() for n in free) <= \
        min(linears[n].weight.abs()[~got[n]].min() for n in free)


def test_a_capped_surgeon_run_reaches_the_target_with_no_layer_over_the_cap(calibration):
    plain = tiny_llama()
    prune(plain, calibration, PruneConfig(method="surgeon", sparsity=0.5, shots=2), progress=False)
    assert max(_layer_sparsity(plain).values()) > 0.55  # the uncapped allocation goes past the cap below
    capped = tiny_llama()
    prune(capped, calibration, PruneConfig(method="surgeon", sparsity=0.5, shots=2, max_layer_sparsity=0.55),
          progress=False)
    assert max(_layer_sparsity(capped).values()) <= 0.55 + 1e-9
    linears = get_adapter(capped).prunable_linears(capped)
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears.values())
    assert zeros == round(0.5 * sum(lin.weight.numel() for lin in linears.values()))


def _reference_capped_selection(costs, params, removed, target, caps):
    """Every structure that may go (not a group's dearest, within its group's cheapest ``cap``), ranked by cost
    per parameter in one list, the cheapest taken until ``target`` parameters are removed."""
    candidates = []
    for i, (c, p, r) in enumerate(zip(costs, params, removed, strict=True)):
        ratio = (c / p).tolist()
        order = sorted(range(c.numel()), key=lambda j: (not bool(r[j]), ratio[j]))
        allowed = order[:min(c.numel() - 1, max(caps[i], int(r.sum())))]
        candidates += [(-float("inf") if r[j] else ratio[j], i, j) for j in allowed]
    chosen = [torch.zeros(c.numel(), dtype=torch.bool) for c in costs]
    total = 0.0
    for _, i, j in sorted(candidates):
        if total >= target and not removed[i][j]:
            break
        chosen[i][j] = True
        total += float(params[i][j])
    return chosen


def test_capped_structure_selection_matches_the_explicit_ranking():
    torch.manual_seed(0)
    sizes, caps = [12, 12, 8, 2], [6, 9, 4, 1]
    costs = [torch.rand(n, dtype=torch.float64) for n in sizes]
    costs[0] *= 0.01  # uncapped, group 0 would lose 11 of its 12
    params = [torch.full((n,), float(w)) for n, w in zip(sizes, [10, 10, 25, 40], strict=True)]
    removed = [torch.zeros(n, dtype=torch.bool) for n in sizes]
    removed[1][[2, 5]] = True  # an earlier shot's: kept removed, counted within the cap
    for target in (0, 120, 260, 300):
        got = select_structures(costs, params, removed, target, caps=caps)
        want = _reference_capped_selection(costs, params, removed, target, caps)
        assert [g.tolist() for g in got] == [w.tolist() for w in want], target
        assert all(int(g.sum()) <= max(cap, int(r.sum())) for g, cap, r in zip(got, caps, removed, strict=True))
    assert int(select_structures(costs, params, removed, 260)[0].sum()) > caps[0]  # the cap is what binds
    assert removable_params(costs, params, removed, caps) == 6 * 10 + 9 * 10 + 4 * 25 + 1 * 40
    assert removable_params(costs, params, removed) == 11 * 10 + 11 * 10 + 7 * 25 + 1 * 40


@pytest.mark.parametrize(("size", "already", "cap", "want"), [
    (12, 0, None, 11),  # uncapped: all but the last
    (12, 3, 6, 6),  # the cap binds
    (12, 8, 6, 8),  # removed before the cap applied: they stay removed, nothing more
    (12, 0, 12, 11),  # a cap of the whole group still keeps one
    (1, 0, None, 0),
])
def test_removable_count_keeps_one_and_counts_earlier_removals_within_the_cap(size, already, cap, want):
    assert removable_count(size, already, cap) == want


def _ffn_removed(result) -> list[float]:
    return [1 - b["ffn_width_kept"] / b["ffn_width_before"] for b in result.structure["layers"]]


def _cheap_first_block():
    """Four blocks, the first one's FFN output scaled down: a global threshold empties it first."""
    model = tiny_llama(num_hidden_layers=4)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(0.02)
    return model


def test_a_capped_structured_run_keeps_every_block_under_the_cap(calibration):
    config = dict(method="surgeon", granularity="structured", sparsity=0.2, shots=2)
    plain = prune(_cheap_first_block(), calibration, PruneConfig(**config), progress=False)
    assert max(_ffn_removed(plain)) > 0.5  # the uncapped allocation goes past the cap below
    capped = prune(_cheap_first_block(), calibration, PruneConfig(**config, max_layer_sparsity=0.5), progress=False)
    assert max(_ffn_removed(capped)) <= 0.5
    assert capped.structure["removed_fraction"] >= 0.2 - 0.01  # the target, up to one structure
    with pytest.raises(LLMSurgeonError, match="cannot be removed when no block loses more than 21%"):
        prune(_cheap_first_block(), calibration, PruneConfig(**config, max_layer_sparsity=0.21), progress=False)


@pytest.mark.parametrize("overrides, message", [
    (dict(max_layer_sparsity=0.4), "below the target sparsity"),
    (dict(max_layer_sparsity=0.0), "must be in"),
    (dict(max_layer_sparsity=1.5), "must be in"),
    (dict(max_layer_sparsity=0.8, granularity="2:4"), "N:M pattern"),
    (dict(max_layer_sparsity=0.2, granularity="structured", sparsity=0.3), "below the target sparsity"),
    (dict(max_layer_sparsity=0.8, method="sparsegpt"), "same fraction"),
    (dict(max_layer_sparsity=0.8, method="magnitude", magnitude_scope="layer"), "same fraction"),
])
def test_impossible_caps_are_refused_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**overrides).validate()
