"""Spearman's rank correlation against its textbook formula for distinct values."""

from __future__ import annotations

import pytest
import torch

from llm_surgeon.math.ranks import spearman


@pytest.mark.parametrize("seed", range(5))
def test_spearman_equals_one_minus_six_sum_of_squared_rank_differences(seed):
    generator = torch.Generator().manual_seed(seed)
    n = 9
    a, b = torch.randn(n, generator=generator).tolist(), torch.randn(n, generator=generator).tolist()
    rank_a = {value: rank for rank, value in enumerate(sorted(a))}
    rank_b = {value: rank for rank, value in enumerate(sorted(b))}
    squared = sum((rank_a[x] - rank_b[y]) ** 2 for x, y in zip(a, b, strict=True))
    assert spearman(a, b) == pytest.approx(1 - 6 * squared / (n * (n * n - 1)), abs=1e-12)


def test_spearman_reads_only_the_order_and_refuses_mismatched_lengths():
    assert spearman([1.0, 2.0, 3.0], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman([1.0, 2.0, 3.0], [1e-9, 5.0, 1e6]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        spearman([1.0, 2.0], [1.0])
