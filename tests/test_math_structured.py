"""Row and column costs and updates against brute-force dense references."""

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
