"""--max-layer-sparsity: the global threshold with a ceiling per layer (the selection, a run, bad input)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_surgeon import PruneConfig, prune
from llm_surgeon.engine.selectors import ElementSelector
from llm_surgeon.errors import ConfigError
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


@pytest.mark.parametrize("overrides, message", [
    (dict(max_layer_sparsity=0.4), "below the target sparsity"),
    (dict(max_layer_sparsity=0.0), "must be in"),
    (dict(max_layer_sparsity=1.5), "must be in"),
    (dict(max_layer_sparsity=0.8, granularity="2:4"), "unstructured"),
    (dict(max_layer_sparsity=0.8, method="sparsegpt"), "same fraction"),
    (dict(max_layer_sparsity=0.8, method="magnitude", magnitude_scope="layer"), "same fraction"),
])
def test_impossible_caps_are_refused_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**overrides).validate()
