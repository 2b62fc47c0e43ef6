"""Masked least squares (the reconstruction step) against an explicit per-row solve and lstsq on the data."""

from __future__ import annotations

import torch

from llm_surgeon.math.least_squares import least_squares_objective, masked_least_squares
from tests.conftest import spd


def _problem(out: int = 6, inp: int = 9, tokens: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, inp, generator=g, dtype=torch.float64)
    Y = torch.randn(tokens, out, generator=g, dtype=torch.float64)
    keep = torch.rand(out, inp, generator=g) > 0.5
    keep[2] = False  # a removed row (structured) stays zero
    keep[:, 4] = False  # a removed column too
    return X, Y, keep, torch.randn(out, inp, generator=g, dtype=torch.float64)


def test_masked_least_squares_equals_a_solve_on_each_rows_support():
    X, Y, keep, W0 = _problem()
    H, B = X.T @ X, Y.T @ X
    W, steps = masked_least_squares(W0, H, B, keep, iterations=100, tolerance=1e-12)
    assert 0 < steps <= 100
    assert bool((W[~keep] == 0).all())
    for i in range(W.shape[0]):
        S = keep[i].nonzero().squeeze(1)
        expected = torch.zeros(W.shape[1], dtype=torch.float64)
        if S.numel():
            expected[S] = torch.linalg.solve(H[S][:, S], B[i, S])
        torch.testing.assert_close(W[i], expected, rtol=1e-8, atol=1e-10)
        if S.numel():  # and it is the least-squares fit of the data on that support
            lstsq = torch.linalg.lstsq(X[:, S], Y[:, i:i + 1]).solution.squeeze(1)
            torch.testing.assert_close(W[i, S], lstsq, rtol=1e-7, atol=1e-9)


def test_few_iterations_lower_the_objective_and_a_converged_start_stays():
    X, Y, keep, W0 = _problem(seed=1)
    H = X.T @ X + 0.01 * torch.eye(X.shape[1], dtype=torch.float64)
    B = Y.T @ X
    start = least_squares_objective(W0 * keep, H, B)
    values = [least_squares_objective(masked_least_squares(W0, H, B, keep, iterations=k)[0], H, B)
              for k in (1, 2, 4, 8)]
    assert values[0] < start and all(b <= a + 1e-12 for a, b in zip(values, values[1:], strict=False))
    solved, _ = masked_least_squares(W0, H, B, keep, iterations=200, tolerance=1e-13)
    again, steps = masked_least_squares(solved, H, B, keep, iterations=50, tolerance=1e-6)
    assert steps == 0 and torch.equal(again, solved)


def test_a_full_mask_gives_the_unconstrained_solution():
    H = spd(7, seed=3)
    B = torch.randn(5, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    W, _ = masked_least_squares(torch.zeros(5, 7, dtype=torch.float64), H, B, torch.ones(5, 7, dtype=torch.bool),
                                iterations=50, tolerance=1e-13)
    torch.testing.assert_close(W, torch.linalg.solve(H, B.T).T, rtol=1e-8, atol=1e-10)
