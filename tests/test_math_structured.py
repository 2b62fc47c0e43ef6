"""Row and column costs and updates against brute-force dense references."""

import pytest
import torch

from llm_surgeon.math.structured import (
    column_costs,
    column_set_cost,
    remove_columns,
    remove_rows,
    row_costs,
    row_set_cost,
)
from tests.conftest import damped_factors, dense_obs_minimiser, spd


def _setup(seed=0):
    torch.manual_seed(seed)
    W = torch.randn(5, 7, dtype=torch.float64)
    f = damped_factors(spd(5, seed + 1), spd(7, seed + 2), 0.1, 0.1)
    return W, f


def test_row_removal_equals_dense_constrained_minimiser():
    W, f = _setup()
    rows = torch.tensor([1, 3])
    remove = torch.zeros_like(W, dtype=torch.bool)
    remove[rows] = True
    expected, loss = dense_obs_minimiser(W, remove, f.G, f.A)
    got = remove_rows(W, rows, f.G_inv)
    assert torch.allclose(got, expected, atol=1e-10)
    assert torch.all(got[rows] == 0)
    assert torch.isclose(row_set_cost(W, rows, f.A, f.G_inv), loss)


def test_column_removal_equals_dense_constrained_minimiser():
    W, f = _setup(3)
    cols = torch.tensor([0, 4, 6])
    remove = torch.zeros_like(W, dtype=torch.bool)
    remove[:, cols] = True
    expected, loss = dense_obs_minimiser(W, remove, f.G, f.A)
    got = remove_columns(W, cols, f.A_inv)
    assert torch.allclose(got, expected, atol=1e-10)
    assert torch.all(got[:, cols] == 0)
    assert torch.isclose(column_set_cost(W, cols, f.G, f.A_inv), loss)


def test_single_row_and_column_costs_match_closed_forms_and_brute_force():
    W, f = _setup(5)
    for i in range(5):
        remove = torch.zeros_like(W, dtype=torch.bool)
        remove[i] = True
        _, loss = dense_obs_minimiser(W, remove, f.G, f.A)
        assert torch.isclose(row_costs(W, f.A, f.G_inv)[i], loss)
        assert torch.isclose(row_costs(W, f.A, f.G_inv)[i], 0.5 * W[i] @ f.A @ W[i] / f.G_inv[i, i])
    for j in range(7):
        remove = torch.zeros_like(W, dtype=torch.bool)
        remove[:, j] = True
        _, loss = dense_obs_minimiser(W, remove, f.G, f.A)
        assert torch.isclose(column_costs(W, f.G, f.A_inv)[j], loss)


def test_round_kept_counts_keeps_multiples_and_the_target():
    from llm_surgeon.math.structured import round_kept_counts, select_structures

    torch.manual_seed(0)
    sizes = [16, 16, 16, 3]
    costs = [torch.rand(n) for n in sizes]
    params = [torch.full((n,), 10.0) for n in sizes]
    removed = [torch.zeros(n, dtype=torch.bool) for n in sizes]
    removed[1][:4] = True  # an earlier shot's removals stay removed
    target = 230
    chosen = select_structures(costs, params, removed, target)
    assert any((n - int(c.sum())) % 4 for n, c in zip(sizes[:3], chosen[:3], strict=True))
    out = round_kept_counts(costs, params, removed, chosen, 4, target, [True, True, True, False])
    for n, o, r in zip(sizes[:3], out[:3], removed[:3], strict=True):
        assert (n - int(o.sum())) % 4 == 0 and n - int(o.sum()) >= 4
        assert bool(o[r].all())
    assert torch.equal(out[3], chosen[3])  # not rounded: untouched
    removed_params = sum(int(o.sum()) * 10 for o in out)
    assert target <= removed_params < target + 4 * 10

    # The rounded selection is the cheapest of its shape: brute force over every up/down choice.
    def cost(sel):
        return sum(float(c[s].sum()) for c, s in zip(costs, sel, strict=True))

    import itertools

    best = None
    for kept in itertools.product(*[range(4, n + 1, 4) for n in sizes[:3]]):
        sel = []
        for n, k, c, r in zip(sizes[:3], kept, costs[:3], removed[:3], strict=True):
            free = (~r).nonzero().squeeze(1)
            drop = n - k - int(r.sum())
            if drop < 0:
                break
            s = r.clone()
            s[free[torch.argsort(c[free])[:drop]]] = True
            sel.append(s)
        else:
            sel.append(out[3])
            if sum(int(s.sum()) * 10 for s in sel) >= target and (best is None or cost(sel) < best):
                best = cost(sel)
    assert abs(cost(out) - best) < 1e-9  # for this draw the greedy moves find the best selection of its shape


def test_equal_width_slots_choose_the_cheapest_equal_width_removal_by_brute_force():
    """Experts of one fused tensor keep equally many neurons: for every count of slots, the chosen removal
    costs the least of all removals of that many neurons per part, and keeps what was removed before."""
    import itertools

    from llm_surgeon.math.structured import equal_width_slots, remove_cheapest

    generator = torch.Generator().manual_seed(0)
    parts, width = 3, 5
    costs = torch.rand(parts, width, generator=generator, dtype=torch.float64)
    removed = torch.zeros(parts, width, dtype=torch.bool)
    removed[0, 4], removed[1, 0], removed[2, 2] = True, True, True
    slot_costs, slot_removed = equal_width_slots(costs, removed)
    assert slot_removed.tolist() == [True, False, False, False, False]
    assert bool((slot_costs[1:].diff() >= 0).all())  # rising: a global threshold takes a prefix
    for count in range(1, width + 1):
        chosen = remove_cheapest(costs, removed, count)
        assert bool((chosen.sum(1) == count).all()) and bool(chosen[removed].all())
        best = 0.0
        for p in range(parts):
            options = [c for c in itertools.combinations(range(width), count) if all(
                i in c for i in removed[p].nonzero().squeeze(1).tolist())]
            best += min(float(costs[p, list(c)].sum()) for c in options)
        assert float(costs[chosen].sum()) == pytest.approx(best)
        assert float(slot_costs[1:count].sum() + costs[removed].sum()) == pytest.approx(best)
    with pytest.raises(ValueError, match="different counts"):
        equal_width_slots(costs, torch.arange(width).expand(parts, width) < torch.arange(parts)[:, None])
