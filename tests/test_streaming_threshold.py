"""The streamed global selection equals the all-at-once one, ties and removed entries included."""

from __future__ import annotations

import pytest
import torch

from llm_surgeon.math.streaming_threshold import capped_select_cheapest, sortable_keys, streaming_select_cheapest
from llm_surgeon.math.threshold import select_cheapest


def _layers(seed: int, with_ties: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    layers = [torch.rand(n, generator=g) * 10 ** torch.randint(-3, 3, (1,), generator=g).item()
              for n in (37, 5, 120, 64)]
    if with_ties:
        layers[1][:] = layers[0][3]  # a run of equal costs across layers
        layers[2][::7] = layers[0][3]
        layers[3][:10] = float("-inf")  # already removed
        layers[0][0] = 0.0
        layers[2][1] = -0.0
    return layers


def test_keys_order_like_the_floats():
    values = torch.tensor([float("-inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 1e30, float("inf")])
    keys = sortable_keys(values)
    assert torch.all(keys[1:] >= keys[:-1]) and keys[3] == keys[4]  # -0.0 and 0.0 tie, as floats do


@pytest.mark.parametrize("with_ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_selection_equals_select_cheapest_for_every_k(seed, with_ties):
    layers = _layers(seed, with_ties)
    sizes = [t.numel() for t in layers]
    calls = []

    def source(i):
        calls.append(i)
        return layers[i]

    for k in range(0, sum(sizes) + 1, 7):
        expected = select_cheapest(layers, k)
        got = streaming_select_cheapest(source, sizes, k)
        assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True)), k
        assert sum(int(g.sum()) for g in got) == k
    assert set(calls) == set(range(len(layers)))  # the costs were asked for layer by layer


def test_impossible_counts_are_refused():
    with pytest.raises(ValueError):
        streaming_select_cheapest(lambda i: torch.zeros(3), [3], 4)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("granularity", ["unstructured", "2:4"])
def test_the_shot_loop_selectors_equal_the_all_at_once_references(scope, granularity):
    """The selectors stream the layers; select_unstructured / select_nm hold them all: same masks."""
    from torch import nn

    from llm_surgeon.engine.selectors import ElementSelector, NMSelector
    from llm_surgeon.math.selection import select_nm, select_unstructured
    from llm_surgeon.methods import MagnitudePruning

    torch.manual_seed(0)
    linears = {f"layer{i}": nn.Linear(8 * (i + 1), 4 + i) for i in range(3)}
    removed = {name: torch.rand_like(lin.weight) < 0.2 for name, lin in linears.items()}
    with torch.no_grad():
        linears["layer1"].weight[0, :4] = 0.5  # ties
    method = MagnitudePruning()
    costs = {name: method.element_costs(lin.weight.detach(), None) for name, lin in linears.items()}
    if granularity == "unstructured":
        selector, expected = ElementSelector(linears, scope), select_unstructured(costs, removed, 0.55, scope)
    else:
        selector, expected = NMSelector(linears, 2, 4, scope), select_nm(costs, removed, 2, 4, 0.6, scope)
    got = selector.select(method, {}, removed, 0.55 if granularity == "unstructured" else 0.6)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[name], expected[name]) for name in got)


def _greedy_with_caps(layers: list[torch.Tensor], k: int, caps: list[int]) -> list[torch.Tensor]:
    """The explicit reference: walk every entry cheapest first, take it unless its layer is full."""
    flat = torch.cat(layers)
    owner = torch.cat([torch.full((t.numel(),), i) for i, t in enumerate(layers)])
    offsets = [0] + torch.tensor([t.numel() for t in layers]).cumsum(0).tolist()
    masks = [torch.zeros(t.numel(), dtype=torch.bool) for t in layers]
    taken = [0] * len(layers)
    for position in torch.argsort(flat, stable=True).tolist():
        if sum(taken) == k:
            break
        i = int(owner[position])
        if taken[i] < caps[i]:
            masks[i][position - offsets[i]] = True
            taken[i] += 1
    return masks


@pytest.mark.parametrize("cap", [0.3, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_capped_selection_equals_the_greedy_reference(seed, cap):
    layers = _layers(seed, with_ties=False)
    layers[3][:10] = float("-inf")  # already removed: within every cap here
    sizes = [t.numel() for t in layers]
    caps = [max(int(cap * n), 10 if i == 3 else 0) for i, n in enumerate(sizes)]
    for k in range(0, sum(caps) + 1, 9):
        expected = _greedy_with_caps(layers, k, caps)
        got = capped_select_cheapest(lambda i: layers[i], sizes, k, caps)
        assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True)), k
        assert all(int(g.sum()) <= c for g, c in zip(got, caps, strict=True))
        assert sum(int(g.sum()) for g in got) == k


def test_capped_selection_without_binding_caps_is_the_plain_one():
    layers = _layers(1, with_ties=True)
    sizes = [t.numel() for t in layers]
    got = capped_select_cheapest(lambda i: layers[i], sizes, 100, sizes)
    assert all(torch.equal(e, g) for e, g in zip(select_cheapest(layers, 100), got, strict=True))


def test_capped_selection_refuses_more_than_the_caps_allow():
    with pytest.raises(ValueError, match="at most 4"):
        capped_select_cheapest(lambda i: torch.zeros(3), [3, 3], 5, [2, 2])
